"""twotower: a config-driven command-line pipeline for two-tower retrieval models."""

__version__ = "0.1.0"
