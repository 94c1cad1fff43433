"""sha256 of files, and the check of an artifact directory against the hashes it records.

Used by both artifacts (``q/``: ``quantization.json``'s ``files``; ``out/``: ``manifest.json``'s
``files``), by ``verify`` and by the tuning databases: it lives below all of them. Standard
library only (the board's runtime imports it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from ..errors import IBertTVMError


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_files(d: Path, files, index: Path, required: Sequence[str], rerun: str) -> None:
    """Check the files of an artifact directory ``d`` against the sha256 its ``index`` JSON
    records in its field ``files`` (name -> sha256): every ``required`` name must be recorded,
    and every recorded file present and unchanged. An index without ``files`` was written by an
    ibert-tvm that did not record them: refused (``rerun`` says how to rebuild), since nothing
    else tells a damaged, swapped or edited file from the one that was written."""
    if files is None:
        raise IBertTVMError(f"{index} records no file hashes (field 'files'): it was written by an older "
                            f"ibert-tvm; re-run `{rerun}` to rebuild it")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise IBertTVMError(f"{index}: field 'files' must map file names to sha256 strings")
    for name in required:
        if name not in files:
            raise IBertTVMError(f"{index}: field 'files' has no sha256 for {name}")
    for name, want in files.items():
        if name in ("", ".", "..") or Path(name).name != name:
            raise IBertTVMError(f"{index}: field 'files' names {name!r}, which is not a file of {d}")
        f = d / name
        if not f.is_file():
            raise IBertTVMError(f"{f} is missing")
        if sha256_file(f) != want:
            raise IBertTVMError(f"{f} is corrupt or was modified after it was written: its sha256 differs from "
                                f"files.{name} in {index.name} (re-run `{rerun}` if the change is wanted)")
