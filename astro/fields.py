"""Config-field declarations shared by the RunConfig dataclasses."""

from __future__ import annotations

import dataclasses
import functools
import typing

ADDED = "added_after_records"


def added_field(default=dataclasses.MISSING, *, factory=dataclasses.MISSING):
    """A config field added after records were first written, whose default reproduces the old behaviour:
    at that default it is left out of the run key (astro.results.canonical_config), so the older records keep
    their keys. Any other value keys the run as usual. factory: for a mutable default ({}), as
    dataclasses.field's default_factory."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={ADDED: True})
    return dataclasses.field(default=default, metadata={ADDED: True})


@functools.cache
def added_fields(cls, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """{path: default} of every added_field in dataclass `cls` and the dataclasses nested in it."""
    out: dict[tuple[str, ...], object] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get(ADDED):
            out[(*prefix, f.name)] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        elif dataclasses.is_dataclass(hints[f.name]):
            out.update(added_fields(hints[f.name], (*prefix, f.name)))
    return out
