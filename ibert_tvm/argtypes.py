"""argparse ``type=`` converters shared by every command: a bad value is a clear usage error."""

from __future__ import annotations

import argparse


def positive_int(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{s} must be at least 1")
    return n


def nonneg_int(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{s} must be >= 0")
    return n


def positive_float(s: str) -> float:
    try:
        x = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"{s} must be > 0")
    return x
