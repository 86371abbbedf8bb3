"""Exception types. The CLI turns any :class:`TopolandError` into one message and exit 2."""


class TopolandError(Exception):
    """Base class: a clear, user-facing error naming the culprit."""


class ConfigError(TopolandError):
    """A config value is unknown, mistyped or impossible. The message names the key."""


class DataError(TopolandError):
    """A dataset is missing, corrupted or invalid. The message names the file or folder."""


class CheckpointError(TopolandError):
    """A checkpoint cannot be loaded: wrong architecture, truncated file, or unsafe format."""


class StoreError(TopolandError):
    """A run directory is inconsistent, locked by another process, or a path escapes it."""


class NotEnoughSamplesError(TopolandError):
    """A statistical test or classifier was given too few samples to be meaningful."""
