"""The experiment layer: Hydra entry points (run, quickstart), grid expansion and probes. Importing it
registers the configs' schema (experiments.schema) that every composition starts from."""

from . import schema  # noqa: F401
