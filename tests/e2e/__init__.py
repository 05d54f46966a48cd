"""End-to-end tests: the pipeline through the CLI, all marked slow (conftest.py)."""
