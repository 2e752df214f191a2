"""User-facing errors: the CLI prints their message as one line, without a traceback."""


class PrditError(Exception):
    """An error caused by input the user can fix (a path, a config value, a file)."""


class ConfigError(PrditError):
    """An invalid, unknown or misspelled configuration key or value."""


class DataError(PrditError):
    """A missing, empty, corrupt or malformed data file or folder."""


class CheckpointError(PrditError):
    """A missing, truncated or incompatible checkpoint."""
