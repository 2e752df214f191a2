"""User-facing errors: the CLI prints their message as one line, without a traceback."""


class PrditError(Exception):
    """An error caused by input the user can fix (a path, a config value, a file)."""

    def __str__(self) -> str:
        text = super().__str__()
        # A DataLoader worker's error comes back re-raised with the worker's whole traceback as its message:
        # its last line is ours ("prdit.errors.DataError: FILE: ..."), the same one line as without workers.
        if text.startswith("Caught ") and "\nOriginal Traceback" in text:
            text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
        return text


class ConfigError(PrditError):
    """An invalid, unknown or misspelled configuration key or value."""


class DataError(PrditError):
    """A missing, empty, corrupt or malformed data file or folder."""


class CheckpointError(PrditError):
    """A missing, truncated or incompatible checkpoint."""


class StorageError(PrditError):
    """An output location that is full, read-only or not writable."""
