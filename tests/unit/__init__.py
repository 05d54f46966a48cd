"""Unit tests: no multi-stage CLI run, the `make test-fast` lane."""
