"""``ibert_tvm.support.fs``: what an output directory may replace, and every failure path of the write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ibert_tvm.errors import IBertTVMError
from ibert_tvm.support import fs
from ibert_tvm.support.fs import ArtifactKind, atomic_dir, check_output, check_replaceable, resolve_output

KIND = ArtifactKind("test model", "ibert-tvm-test/1", "meta.json", frozenset({"meta.json", "data.bin"}))


def artifact(d: Path, fmt: str = "ibert-tvm-test/1", data: bytes = b"old") -> Path:
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"format": fmt}))
    (d / "data.bin").write_bytes(data)
    return d


def write(tmp: Path, data: bytes = b"new") -> None:
    (tmp / "meta.json").write_text(json.dumps({"format": "ibert-tvm-test/2"}))
    (tmp / "data.bin").write_bytes(data)


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name or ".probe-" in p.name)


def test_import_is_light():
    """The board runtime imports support/: it must not pull numpy, torch or tvm."""
    code = "import sys, ibert_tvm.support.fs; print(sorted({'numpy', 'torch', 'tvm'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


# -- check_replaceable -------------------------------------------------------------------------
def test_missing_empty_and_own_artifact_are_replaceable(tmp_path):
    assert check_replaceable(tmp_path / "missing", KIND) == []
    (tmp_path / "empty").mkdir()
    assert check_replaceable(tmp_path / "empty", KIND) == []
    assert check_replaceable(artifact(tmp_path / "a"), KIND) == ["data.bin", "meta.json"]
    assert check_replaceable(artifact(tmp_path / "v9", fmt="ibert-tvm-test/9"), KIND) == ["data.bin", "meta.json"]


def _foreign_file(d, tmp_path):
    (d / "notes.txt").write_text("mine")


def _subdir(d, tmp_path):
    (d / "sub").mkdir()


def _own_name_as_dir(d, tmp_path):
    (d / "data.bin").unlink()
    (d / "data.bin").mkdir()


def _own_name_as_symlink(d, tmp_path):
    (d / "data.bin").unlink()
    (d / "data.bin").symlink_to(tmp_path / "users-file")


@pytest.mark.parametrize("spoil, named", [
    (_foreign_file, "notes.txt"),
    (_subdir, "sub/"),
    (_own_name_as_dir, "data.bin/"),
    (_own_name_as_symlink, "data.bin"),
])
def test_foreign_entries_are_refused_and_named(spoil, named, tmp_path):
    d = artifact(tmp_path / "a")
    spoil(d, tmp_path)
    with pytest.raises(IBertTVMError, match=f"refusing to replace {d}: not part of a test model: .*{named}"):
        check_replaceable(d, KIND)


@pytest.mark.parametrize("fmt", ["ibert-tvm-other/1", "ibert-tvm-testing/1", "ibert-tvm", None])
def test_artifact_of_another_kind_is_refused(fmt, tmp_path):
    d = artifact(tmp_path / "a", fmt=fmt)
    with pytest.raises(IBertTVMError, match="it is not a test model"):
        check_replaceable(d, KIND)


def test_own_files_without_the_marker_are_refused(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    (d / "data.bin").write_bytes(b"whose?")
    with pytest.raises(IBertTVMError, match="meta.json is missing"):
        check_replaceable(d, KIND)


def test_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(IBertTVMError, match="exists and is not a directory"):
        check_replaceable(tmp_path / "f", KIND)


def test_kind_none_replaces_only_missing_or_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_replaceable(tmp_path / "empty", None) == []
    with pytest.raises(IBertTVMError, match="it is not empty"):
        check_replaceable(artifact(tmp_path / "a"), None)


def test_long_listings_are_cut(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    for i in range(11):
        (d / f"f{i:02d}").write_text("")
    with pytest.raises(IBertTVMError, match="f07 and 3 more"):
        check_replaceable(d, KIND)


# -- resolve_output / check_output -------------------------------------------------------------
@pytest.mark.parametrize("out", [".", "..", "", "/"])
def test_working_directory_and_its_ancestors_are_refused(out, tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(IBertTVMError, match="working directory"):
        resolve_output(out)


def test_symlinks_are_followed(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert resolve_output(tmp_path / "link") == tmp_path / "real"


def test_check_output_probes_and_leaves_nothing(tmp_path):
    check_output(tmp_path / "a" / "b" / "q", KIND)  # the probe goes to the nearest existing ancestor
    assert list(tmp_path.iterdir()) == []


def test_check_output_under_a_file(tmp_path):
    (tmp_path / "f").write_text("keep")
    with pytest.raises(IBertTVMError, match=f"cannot write {tmp_path}/f/q: .*Not a directory"):
        check_output(tmp_path / "f" / "q", KIND)
    assert (tmp_path / "f").read_text() == "keep"


# -- atomic_dir ----------------------------------------------------------------------------------
def test_writes_and_replaces_own_artifact(tmp_path):
    out = tmp_path / "q"
    with atomic_dir(out, KIND) as tmp:
        write(tmp, b"first")
    with atomic_dir(out, KIND) as tmp:
        write(tmp, b"second")
    assert (out / "data.bin").read_bytes() == b"second"
    assert leftovers(tmp_path) == []


def test_replaces_an_empty_directory(tmp_path):
    (tmp_path / "q").mkdir()
    with atomic_dir(tmp_path / "q", None) as tmp:
        write(tmp)
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["data.bin", "meta.json"]


def test_body_exception_leaves_out_and_no_temporary(tmp_path):
    out = artifact(tmp_path / "q")
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(out, KIND) as tmp:
            write(tmp)
            raise OSError("disk full")
    assert (out / "data.bin").read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_created_parents_are_removed_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "a" / "b" / "q", KIND) as tmp:
            write(tmp)
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_puts_the_old_artifact_back(tmp_path, monkeypatch):
    out = artifact(tmp_path / "q")
    rename = os.rename

    def failing(src, dst):
        if ".tmp-" in str(src):
            raise OSError(18, "Invalid cross-device link")
        rename(src, dst)

    monkeypatch.setattr(fs.os, "rename", failing)
    with pytest.raises(IBertTVMError, match=f"cannot write {out}: .*cross-device"):
        with atomic_dir(out, KIND) as tmp:
            write(tmp)
    assert (out / "data.bin").read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_file_added_to_an_empty_output_meanwhile_is_kept(tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    with pytest.raises(IBertTVMError, match=f"cannot write {out}"):
        with atomic_dir(out, KIND) as tmp:
            write(tmp)
            (out / "notes.txt").write_text("mine")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert leftovers(tmp_path) == []


def test_file_added_to_the_old_artifact_meanwhile_is_kept(tmp_path):
    """Only the files listed before the write are deleted: a newcomer survives in .q.old-*."""
    out = artifact(tmp_path / "q")
    with pytest.raises(IBertTVMError, match=f"wrote {out}, but .*q.old-.* is kept"):
        with atomic_dir(out, KIND) as tmp:
            write(tmp)
            (out / "notes.txt").write_text("mine")
    assert (out / "data.bin").read_bytes() == b"new"
    [old] = leftovers(tmp_path)
    assert [p.name for p in (tmp_path / old).iterdir()] == ["notes.txt"]


def test_directory_mode_follows_the_umask(tmp_path):
    old = os.umask(0o007)
    try:
        with atomic_dir(tmp_path / "a" / "q", KIND) as tmp:
            write(tmp)
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "q").stat().st_mode & 0o777 == 0o770
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o770
