"""argparse ``type=`` converters shared by every command: a bad value is a clear usage error."""

from __future__ import annotations

import argparse


def _int_at_least(s: str, low: int, what: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if n < low:
        raise argparse.ArgumentTypeError(f"{s} must be {what}")
    return n


def positive_int(s: str) -> int:
    return _int_at_least(s, 1, "at least 1")


def nonneg_int(s: str) -> int:
    return _int_at_least(s, 0, ">= 0")


def positive_float(s: str) -> float:
    try:
        x = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"{s} must be > 0")
    return x
