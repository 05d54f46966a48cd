"""The one exception the CLI turns into a clean one-line message and a non-zero exit."""


class TwoTowerError(Exception):
    """A user-facing error: bad input, missing artifacts, wrong config values."""
