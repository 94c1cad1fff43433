"""Output directories that are written atomically and never cost a user a file.

Every output directory (a quantized q/, a compiled out/, a benchmark cache entry) is written with
``with atomic_dir(out, kind) as tmp: ...``; :func:`check_output` runs the same checks, plus a
write probe, before a command starts its work.

**What may be replaced.** ``out`` may be a missing path, an empty directory, or an artifact of
the same :class:`ArtifactKind`: a directory holding only regular files named in ``kind.files``,
among them ``kind.marker``, a JSON object whose ``format`` is of the kind's family (an
``ibert-tvm-quantized/*`` q/ is replaced only by a q/). ``kind=None`` replaces only a missing path
or an empty directory. Everything else is refused with an :class:`IBertTVMError` naming what is
in the way: a file, a foreign or nested entry, an artifact of another kind, the working directory
or one of its ancestors (it cannot be renamed away under the running process).

**Where.** Symlinks are followed: the artifact is written to the final target of ``out`` and a
link stays a link. Missing parent directories are created. The directory gets mode
``0o777 & ~umask``, as ``mkdir`` would give it.

**Atomicity.** The files are written into a temporary sibling ``.NAME.tmp-*`` of the resolved
target (same directory, so same filesystem), which is then renamed onto the target: in one step
when the target is missing or empty; otherwise the old artifact is first moved aside to
``.NAME.old-*``, and after the rename only the files the check listed as its own are deleted
before its directory is removed. Nothing else is ever deleted: no ``rmtree`` of a user path.

**Failures.** A refusal touches nothing. An exception in the ``with`` body deletes the temporary
directory (it holds only what the body wrote) and the parents created for it, leaves ``out``
untouched and propagates. A failed rename moves the old artifact back, deletes the temporary
directory and the created parents, and raises :class:`IBertTVMError`. If the old artifact gains
or loses a file while it is being replaced, the new one is in place and the old directory is kept
as ``.NAME.old-*`` with what is left in it, and :class:`IBertTVMError` says so.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import IBertTVMError


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of output directory, declared next to its writer.

    ``files`` are all the names the writer may create (the marker included); ``marker`` is the
    JSON file whose ``format`` (``<family>/<version>``) identifies the kind, e.g. ``format``
    ``"ibert-tvm-quantized/1"`` accepts any ``ibert-tvm-quantized/*``.
    """

    name: str
    format: str
    marker: str
    files: frozenset[str]

    def marks(self, directory: Path) -> bool:
        """Whether ``directory``'s marker file carries a format of this kind's family."""
        try:
            fmt = json.loads((directory / self.marker).read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(fmt, str) and fmt.partition("/")[0] == self.format.partition("/")[0]


def resolve_output(out: str | os.PathLike) -> Path:
    """The directory to write for ``out``: every symlink followed. Refuses the working directory
    and its ancestors."""
    real = Path(os.path.realpath(out))
    cwd = Path.cwd()
    if real == cwd or real in cwd.parents:
        raise IBertTVMError(f"output {out} is the working directory or one of its parents: choose another output")
    return real


def check_replaceable(out: str | os.PathLike, kind: ArtifactKind | None) -> list[str]:
    """The names in ``out`` that replacing it deletes (all of them ``kind``'s own files), or refuse."""
    out = Path(out)
    if not out.exists():
        return []
    if not out.is_dir():
        raise IBertTVMError(f"output {out} exists and is not a directory")
    entries = sorted(out.iterdir())
    if not entries:
        return []
    if kind is None:
        raise IBertTVMError(f"refusing to replace {out}: it is not empty ({_listing(entries)})")
    foreign = [p for p in entries if p.name not in kind.files or p.is_symlink() or not p.is_file()]
    if foreign:
        raise IBertTVMError(f"refusing to replace {out}: not part of a {kind.name}: {_listing(foreign)} "
                            "(choose a new or empty output directory)")
    if not kind.marks(out):
        raise IBertTVMError(f"refusing to replace {out}: it is not a {kind.name} "
                            f"({kind.marker} is missing or of another format)")
    return [p.name for p in entries]


def check_output(out: str | os.PathLike, kind: ArtifactKind | None) -> None:
    """Before any work: ``out`` must be replaceable and its directory writable (a probe directory
    is created and removed there, which also holds for root on a read-only filesystem)."""
    real = resolve_output(out)
    check_replaceable(out, kind)
    parent = real.parent
    while not os.path.lexists(parent):
        parent = parent.parent
    probe = _sibling(parent / real.name, "probe")
    _mkdir(probe, out)
    os.rmdir(probe)


class atomic_dir:
    """``with atomic_dir(out, kind) as tmp:`` write into ``tmp``; on success it becomes ``out``
    (the module docstring states the contract)."""

    def __init__(self, out: str | os.PathLike, kind: ArtifactKind | None):
        self.out = Path(out)
        self.kind = kind

    def __enter__(self) -> Path:
        self.real = resolve_output(self.out)
        self.old_files = check_replaceable(self.out, self.kind)
        self.created = _make_parents(self.real.parent, self.out)
        self.tmp = _sibling(self.real, "tmp")
        try:
            _mkdir(self.tmp, self.out)
        except IBertTVMError:
            self._discard()
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                _replace(self.tmp, self.real, self.old_files)
                return False
            except OSError as e:
                self._discard()
                raise IBertTVMError(f"cannot write {self.out}: {e}") from e
        self._discard()
        return False

    def _discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        _remove_empty(self.created)


def _replace(tmp: Path, real: Path, old_files: list[str]) -> None:
    """Rename ``tmp`` onto ``real``; an old artifact there is moved aside, then its files deleted."""
    if not old_files:  # missing or empty: one rename (it replaces an empty directory)
        os.rename(tmp, real)
        return
    old = _sibling(real, "old")
    os.rename(real, old)
    try:
        os.rename(tmp, real)
    except OSError:
        os.rename(old, real)
        raise
    try:
        for name in old_files:
            os.unlink(old / name)
        os.rmdir(old)
    except OSError as e:
        raise IBertTVMError(f"wrote {real}, but {old} is kept: it changed while being replaced ({e.strerror})") from e


def _make_parents(d: Path, out: Path) -> list[Path]:
    """Create ``d`` and its missing ancestors; returns the created ones, deepest first."""
    missing = []
    while not os.path.lexists(d):
        missing.append(d)
        d = d.parent
    created: list[Path] = []
    try:
        for p in reversed(missing):
            _mkdir(p, out)
            created.insert(0, p)
    except IBertTVMError:
        _remove_empty(created)
        raise
    return created


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the directories we created (deepest first), stopping at one that is not empty."""
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            return


def _mkdir(path: Path, out) -> None:
    """``mkdir`` with mode 0o777 & ~umask; a failure is the user's "cannot write" error."""
    try:
        os.mkdir(path, 0o777)
    except OSError as e:
        raise IBertTVMError(f"cannot write {out}: {path.parent}: {e.strerror}") from None


def _sibling(real: Path, tag: str) -> Path:
    return real.with_name(f".{real.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def _listing(paths: list[Path], limit: int = 8) -> str:
    names = [p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
