"""Helpers shared by the CLI-level tests (``test_cli.py``, ``test_outputs.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ibert_tvm.cli import main


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``ibert-tvm argv...`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc: int, err: str, command: str, *needles: str) -> None:
    """Exit 2 with one ``ibert-tvm <command>: error: ...`` line naming the problem, no traceback."""
    assert rc == 2, err
    assert f"ibert-tvm {command}: error: " in err, err
    assert "Traceback" not in err
    for n in needles:
        assert n.lower() in err.lower(), f"{n!r} not in {err!r}"


def assert_nothing_written(out: Path) -> None:
    """Neither ``out`` nor a temporary ``.<out>.tmp-*`` / ``.<out>.old-*`` sibling exists."""
    assert not out.exists(), f"{out} was written"
    left = [p.name for p in out.parent.iterdir() if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-"))]
    assert not left, f"left behind: {left}"


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
