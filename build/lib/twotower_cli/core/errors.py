"""The exceptions the CLI turns into a clean one-line message and a non-zero exit. Anything
else (a library bug) keeps its traceback."""


class TwoTowerError(Exception):
    """A user-facing error: bad input, missing or stale artifacts."""


class ConfigError(TwoTowerError):
    """A bad config value; the message starts with the dotted key it names."""
