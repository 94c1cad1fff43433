"""``ibert-tvm bundle out/ -o board.tar.gz``: one file, unpacked somewhere else, runs alone.

On the host: the bundle's contents (runtime modules only, every hash, exact pins), and a fresh
interpreter run from the unpacked bundle (its own ``ibert_tvm``, no PYTHONPATH) giving the x86
build's integers. On the emulated aarch64 board (``qemu-aarch64``, runtime-only TVM, no torch):
from the unpacked bundle alone, ``python -m ibert_tvm.deploy.run``, ``ibert_tvm.load(...).encode``
and ``python -m ibert_tvm.deploy.server`` with a real HTTP request, each bit-identical to the x86
build run here. The board's pure-python serving packages (starlette, uvicorn, ...) are copied
from this host's installed files, standing in for ``pip install -r requirements.txt``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from importlib.metadata import distribution, version
from pathlib import Path

import httpx
import numpy as np
import pytest

import aarch64_support as arm
from cli_helpers import assert_user_error, cli
from ibert_tvm.deploy.runtime import CompiledModel
from ibert_tvm.support.hashing import sha256_file

TEXTS = ["A plane is taking off.", "An air plane is taking off.", "A man is playing a flute."]


def unpack(bundle: Path, where: Path) -> Path:
    where.mkdir()
    with tarfile.open(bundle) as t:
        t.extractall(where, filter="data")
    (top,) = list(where.iterdir())
    return top


def make(capsys, out: Path, tmp_path: Path, name: str = "board") -> Path:
    bundle = tmp_path / f"{name}.tar.gz"
    rc, stdout, err = cli(capsys, "bundle", out, "-o", bundle)
    assert rc == 0, err
    assert str(bundle) in stdout
    return unpack(bundle, tmp_path / "unpacked")


def test_bundle_holds_the_model_the_runtime_modules_and_exact_pins(compiled_factory, tmp_path, capsys):
    out = compiled_factory("BertModel")
    top = make(capsys, out, tmp_path)
    rec = json.loads((top / "bundle.json").read_text())
    files = sorted(str(p.relative_to(top)) for p in top.rglob("*") if p.is_file())
    assert sorted(rec["files"]) == [f for f in files if f != "bundle.json"]
    assert all(sha256_file(top / f) == h for f, h in rec["files"].items())
    assert (rec["arch"], rec["target"], rec["head"], rec["float_ops"]) == ("x86_64", "llvm", "embedding", 0)
    for f in json.loads((out / "manifest.json").read_text())["files"]:
        assert sha256_file(top / "model" / f) == sha256_file(out / f)
    mods = [f for f in files if f.startswith("ibert_tvm/")]
    assert "ibert_tvm/deploy/server.py" in mods and "ibert_tvm/deploy/api.py" in mods
    assert not [f for f in mods if f.split("/")[1] in ("model", "passes", "quantization", "schedules", "frontend",
                                                        "cli", "benchmarks")]
    pins = dict(line.split("==") for line in (top / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for name in ("apache-tvm", "apache-tvm-ffi", "numpy", "tokenizers", "starlette", "uvicorn"):
        assert pins[name] == version(name)


def test_unpacked_bundle_runs_alone_on_the_host(compiled_factory, tmp_path, capsys):
    out = compiled_factory("BertModel")
    top = make(capsys, out, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "TVM_"))}
    code = ("import json, ibert_tvm; m = ibert_tvm.load('model'); q, _ = m.encode_int(%r); "
            "print(json.dumps({'file': ibert_tvm.__file__, 'q': q.tolist()}))" % TEXTS)
    r = subprocess.run([sys.executable, "-c", code], cwd=top, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert Path(got["file"]).resolve() == (top / "ibert_tvm" / "__init__.py").resolve()
    want = CompiledModel(out).run_text(TEXTS)
    np.testing.assert_array_equal(np.array(got["q"], np.int32), want)
    r = subprocess.run([sys.executable, "-m", "ibert_tvm.deploy.run", "model", *TEXTS, "--print-ints"], cwd=top,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    np.testing.assert_array_equal(json.loads(r.stdout)["output"], want)


def test_bundle_bad_inputs(compiled_factory, tmp_path, capsys):
    out = compiled_factory("BertModel")
    rc, _, err = cli(capsys, "bundle", tmp_path / "missing", "-o", tmp_path / "b.tar.gz")
    assert_user_error(rc, err, "bundle", "missing", "not a directory")
    rc, _, err = cli(capsys, "bundle", out, "-o", tmp_path / "b.zip")
    assert_user_error(rc, err, "bundle", "b.zip", ".tar.gz")
    precious = tmp_path / "notes.tar.gz"
    precious.write_text("precious")
    rc, _, err = cli(capsys, "bundle", out, "-o", precious)
    assert_user_error(rc, err, "bundle", "notes.tar.gz", "not an ibert-tvm bundle")
    assert precious.read_text() == "precious"
    rc, _, err = cli(capsys, "bundle", out, "-o", tmp_path / "nope" / "b.tar.gz")
    assert_user_error(rc, err, "bundle", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tar.gz"]  # no temporary left behind
    make(capsys, out, tmp_path, "again")  # a bundle replaces an older bundle
    rc, _, err = cli(capsys, "bundle", out, "-o", tmp_path / "again.tar.gz")
    assert rc == 0, err


# -- the emulated aarch64 board ---------------------------------------------------------------
@pytest.fixture(scope="module")
def board():
    return arm.board()


@pytest.fixture(scope="module")
def arm_out(quantized_factory, tmp_path_factory):
    return arm.arm_out(quantized_factory, tmp_path_factory)


def stage_serving_packages(dest: Path, pins: dict[str, str]) -> Path:
    """Copy this host's installed files of the pure-python serving packages (the versions pinned in
    the bundle's requirements.txt) into ``dest``, the board's stand-in for their pip install."""
    from ibert_tvm.deploy.bundle import SERVE_PACKAGES

    for name in SERVE_PACKAGES:
        dist = distribution(name)
        assert dist.version == pins[name]
        for f in dist.files or []:
            if f.parts[0] == ".." or f.suffix in (".pyc",):
                continue
            assert f.suffix not in (".so", ".pyd"), f"{name} is not pure python: {f}"
            target = dest / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dist.locate_file(f), target)
    return dest


def test_bundle_alone_runs_encodes_and_serves_on_the_board(board, arm_out, compiled_factory, tmp_path, capsys):
    from ibert_tvm.deploy.board import stop

    top = make(capsys, arm_out, tmp_path)
    assert json.loads((top / "bundle.json").read_text())["arch"] == "aarch64"
    x86 = CompiledModel(compiled_factory("BertModel"))
    want = x86.run_text(TEXTS)

    res = board.run(["-m", "ibert_tvm.deploy.run", "model", *TEXTS, "--print-ints"], cwd=top, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    np.testing.assert_array_equal(json.loads(res.stdout)["output"], want)

    code = ("import json, sys, ibert_tvm; m = ibert_tvm.load('model'); e = m.encode(%r, normalize_embeddings=True); "
            "q, s = m.encode_int(%r); print(json.dumps({'e': e.tolist(), 'q': q.tolist(), 'file': ibert_tvm.__file__, "
            "'torch': 'torch' in sys.modules}))" % (TEXTS, TEXTS))
    res = board.run(["-c", code], cwd=top, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    assert got["file"].startswith(str(top)) and got["torch"] is False
    np.testing.assert_array_equal(np.array(got["q"], np.int32), want)
    norm = (want / np.linalg.norm(want.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_array_equal(np.array(got["e"], np.float32), norm)

    pins = dict(line.split("==") for line in (top / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    site = stage_serving_packages(tmp_path / "site", pins)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "board-server.log", "w")
    proc = board.popen(["-m", "ibert_tvm.deploy.server", "model", "--port", str(port), "--api-key", "k"],
                       pythonpath=[site], lifetime=900, cwd=top, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, (tmp_path / "board-server.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "board-server.log").read_text()[-3000:]
            time.sleep(1)
        r = httpx.post(url + "/embed", json={"inputs": TEXTS, "normalize": False},
                       headers={"Authorization": "Bearer k"}, timeout=300)
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(np.array(r.json(), np.float32),
                                      (want.astype(np.float64) * x86.output_scale).astype(np.float32))
        info = httpx.get(url + "/info", headers={"Authorization": "Bearer k"}, timeout=60).json()
        assert info["target"] == "aarch64" and info["integer_only"]["verified"] is True
    finally:
        stop(proc)
        log.close()
