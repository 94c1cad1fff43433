"""No file a user owns is ever lost: what ``calibrate -o`` and ``compile -o`` may replace, and how.

An output may be a missing path, an empty directory, or an artifact of the same kind holding
only the files the tool writes (q/ for ``calibrate``, out/ for ``compile``). Anything else is
refused before any work, naming the foreign files, and left exactly as it was. The write
follows symlinks, never leaves a ``.NAME.tmp-*`` / ``.NAME.old-*`` behind, and gives the
directory the mode the umask asks for.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from cli_helpers import assert_user_error, cli, copy_dir


def calibrate(capsys, tiny_factory, text_file, out):
    return cli(capsys, "calibrate", tiny_factory("BertModel"), "-o", out, "--text", text_file, "-n", "4")


def snapshot(d: Path) -> dict:
    """Every entry under ``d`` (relative path -> file bytes, or None for a directory)."""
    return {str(p.relative_to(d)): None if p.is_dir() else p.read_bytes() for p in sorted(d.rglob("*"))}


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def fake_compiled_out(d: Path) -> Path:
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"format": "ibert-tvm-compiled/1"}))
    for name in ("model.so", "params.npz", "tokenizer.json"):
        (d / name).write_bytes(b"compiled " + name.encode())
    return d


# -- what may be replaced --------------------------------------------------------------------
@pytest.mark.parametrize("extra", ["notes.txt", "subdir"])
def test_calibrate_keeps_user_files_in_an_artifact_dir(extra, tiny_factory, quantized_factory, tmp_path, capsys,
                                                       text_file):
    q = copy_dir(quantized_factory("BertModel")[1], tmp_path / "q")
    if extra == "subdir":
        (q / "subdir").mkdir()
        (q / "subdir" / "data.csv").write_text("1,2,3")
    else:
        (q / "notes.txt").write_text("precious")
    before = snapshot(q)
    rc, _, err = calibrate(capsys, tiny_factory, text_file, q)
    assert_user_error(rc, err, "calibrate", str(q), extra)
    assert snapshot(q) == before
    assert leftovers(tmp_path) == []


def test_calibrate_keeps_a_file_beside_a_lookalike_manifest(tiny_factory, tmp_path, capsys, text_file):
    """A ``manifest.json`` whose format merely starts with "ibert-tvm" does not make main.c ours."""
    d = tmp_path / "project"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"format": "ibert-tvm-someday"}))
    (d / "main.c").write_text("int main(void) { return 0; }\n")
    before = snapshot(d)
    rc, _, err = calibrate(capsys, tiny_factory, text_file, d)
    assert_user_error(rc, err, "calibrate", str(d), "main.c")
    assert snapshot(d) == before
    assert leftovers(tmp_path) == []


def test_calibrate_does_not_replace_a_compiled_out(tiny_factory, tmp_path, capsys, text_file):
    out = fake_compiled_out(tmp_path / "out")
    before = snapshot(out)
    rc, _, err = calibrate(capsys, tiny_factory, text_file, out)
    assert_user_error(rc, err, "calibrate", str(out), "model.so")
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_compile_does_not_replace_a_quantized_q(replay_build, quantized_factory, tmp_path, capsys):
    q = quantized_factory("BertModel")[1]
    other = copy_dir(q, tmp_path / "q2")
    before = snapshot(other)
    rc, _, err = cli(capsys, "compile", q, "-o", other)
    assert_user_error(rc, err, "compile", str(other), "quantized.safetensors")
    assert snapshot(other) == before
    assert leftovers(tmp_path) == []


# -- unusual paths -----------------------------------------------------------------------------
@pytest.mark.parametrize("contents", ["empty", "artifact"])
def test_output_is_the_working_directory(contents, tiny_factory, quantized_factory, tmp_path, capsys, text_file,
                                         monkeypatch):
    """``-o .`` cannot be renamed into place: refused, nothing written anywhere."""
    here = tmp_path / "here"
    if contents == "artifact":
        copy_dir(quantized_factory("BertModel")[1], here)
    else:
        here.mkdir()
    before = snapshot(here)
    monkeypatch.chdir(here)
    rc, _, err = calibrate(capsys, tiny_factory, text_file, ".")
    assert_user_error(rc, err, "calibrate", "working directory")
    assert snapshot(here) == before
    assert leftovers(tmp_path) == []


def _other_filesystem_dir(tmp_path: Path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is not a separate filesystem here")
    return Path(tempfile.mkdtemp(dir=shm))


@pytest.mark.parametrize("where", ["same-filesystem", "other-filesystem"])
@pytest.mark.parametrize("target_state", ["missing", "artifact"])
def test_symlinked_output_is_written_to_its_target(where, target_state, tiny_factory, quantized_factory, tmp_path,
                                                   capsys, text_file):
    """The artifact lands in the link's target (also across filesystems); the link stays a link."""
    base = _other_filesystem_dir(tmp_path) if where == "other-filesystem" else tmp_path / "elsewhere"
    base.mkdir(exist_ok=True)
    try:
        target = base / "q"
        if target_state == "artifact":
            copy_dir(quantized_factory("BertModel")[1], target)
        link = tmp_path / "q"
        link.symlink_to(target)
        rc, _, err = calibrate(capsys, tiny_factory, text_file, link)
        assert rc == 0, err
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert sorted(p.name for p in target.iterdir()) == ["quantization.json", "quantized.safetensors",
                                                            "tokenizer.json"]
        assert leftovers(tmp_path) == [] and leftovers(base) == []
    finally:
        if where == "other-filesystem":
            subprocess.run(["rm", "-rf", str(base)], check=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only filesystem (a ``ro`` tmpfs): unwritable even for root."""
    d = tmp_path / "ro"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", str(d)], check=True)


def _no_work(*a, **kw):
    pytest.fail("the work started although the output cannot be written")


@pytest.mark.parametrize("command", ["calibrate", "compile"])
@pytest.mark.parametrize("parent", ["read-only-filesystem", "a-file"])
def test_unwritable_output_is_refused_before_any_work(command, parent, request, tiny_factory, quantized_factory,
                                                      tmp_path, capsys, text_file, monkeypatch):
    if parent == "a-file":
        where = tmp_path / "notes.txt"
        where.write_text("keep me")
    else:
        where = request.getfixturevalue("read_only_dir")
    out = where / "q"
    if command == "calibrate":
        monkeypatch.setattr("ibert_tvm.model.hf_loader.load_checkpoint", _no_work)
        rc, _, err = calibrate(capsys, tiny_factory, text_file, out)
    else:
        q = quantized_factory("BertModel")[1]
        monkeypatch.setattr("ibert_tvm.quantization.artifact.QuantizedModel.load", _no_work)
        rc, _, err = cli(capsys, "compile", q, "-o", out)
    assert_user_error(rc, err, command, str(out), "cannot write")
    assert leftovers(tmp_path) == []
    if parent == "a-file":
        assert where.read_text() == "keep me"


# -- modes -------------------------------------------------------------------------------------
@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_calibrate_output_follows_the_umask(umask, tiny_factory, tmp_path, capsys, text_file):
    out = tmp_path / "q"
    rc, _, err = calibrate(capsys, tiny_factory, text_file, out)
    assert rc == 0, err
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


def test_compile_output_follows_the_umask(umask, replay_build, quantized_factory, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "compile", quantized_factory("BertModel")[1], "-o", out)
    assert rc == 0, err
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
