"""The configs' schema: each section of astro.config.RunConfig (model, calib, eval, quant, method, loop) is
registered in Hydra's ConfigStore as `schema/<section>`, from its dataclass. So a field's type and default
live in one place, the dataclass: conf/config.yaml and conf/quickstart.yaml put these schemas first in their
defaults list and the config groups (model/, data/, method/, ...) only set what differs. Hydra then refuses
unknown keys and values of the wrong type at composition, naming the key; value checks stay in the
dataclasses' __post_init__ (astro.config.from_dict)."""

from __future__ import annotations

import typing

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from astro.config import RunConfig


def _writable(node: DictConfig) -> DictConfig:
    """OmegaConf marks the nodes of frozen dataclasses read-only; the config groups must refine them."""
    OmegaConf.set_readonly(node, None)
    for value in node.values():
        if isinstance(value, DictConfig):
            _writable(value)
    return node


def scaled(base, factor) -> float:
    """${mul:a,b}: a * b rounded to 6 significant digits, so 2.5e-3 x 0.4 is the 1e-3 a user would type (the
    product enters run keys through method.beta)."""
    return float(f"{float(base) * float(factor):.6g}")


def register() -> None:
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", scaled)
    cs = ConfigStore.instance()
    for section, cls in typing.get_type_hints(RunConfig).items():
        cs.store(group="schema", name=section, node=_writable(OmegaConf.structured(cls)))


register()
