"""Errors the CLI reports as a clear message and a non-zero exit (no traceback)."""


class IBertTVMError(Exception):
    """A user-facing error: bad input, a missing tool, a corrupt artifact."""


class FloatFoundError(IBertTVMError):
    """The integer-only verifier found floating point in a module."""
