"""Exceptions that the CLI turns into one human-readable line (no traceback)."""


class FeatlabError(Exception):
    """A user-facing failure: bad input, missing file, inconsistent state."""


class BadImageError(FeatlabError):
    """An image file that cannot be decoded into RGB; carries the reason."""
