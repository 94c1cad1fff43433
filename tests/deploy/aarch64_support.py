"""Shared by test_aarch64.py and test_rpc.py: the tools gate, the emulated board, the aarch64 build.

Session-wide caches live here (not in per-module fixtures) so the aarch64 compile and the board
check happen once per pytest session, whichever test file asks first.

Gate: the cross tools (Debian ``g++-aarch64-linux-gnu``, ``binutils-aarch64-linux-gnu``) and
``qemu-aarch64`` (``qemu-user``). Missing tools skip the test with the install command, except
under CI (``CI`` set, as in ``.ci/run``'s environment), where they fail it: CI must run these.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
TOOLS = {
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "aarch64-linux-gnu-objdump": "binutils-aarch64-linux-gnu",
    "qemu-aarch64": "qemu-user",
}
KEY = "ibert-arm-test"
_cache: dict = {}


def unavailable(reason: str):
    """Skip (a developer machine without the tools), or fail under CI."""
    if IN_CI:
        pytest.fail(f"CI must run the aarch64 tests: {reason}", pytrace=False)
    pytest.skip(reason)


def need_tools(*names: str) -> None:
    missing = [n for n in (names or TOOLS) if shutil.which(n) is None]
    if missing:
        pkgs = " ".join(sorted({TOOLS[n] for n in missing}))
        unavailable(f"{', '.join(missing)} not installed (apt-get install {pkgs})")


def board():
    """The prepared emulated board (built into ~/.cache/ibert-tvm/arm-board on first use)."""
    need_tools("qemu-aarch64")
    if "board" not in _cache:
        from ibert_tvm.deploy.board import prepare_board
        from ibert_tvm.errors import IBertTVMError

        try:
            _cache["board"] = prepare_board(log=lambda *a: None)
        except IBertTVMError as e:
            _cache["board"] = e
    b = _cache["board"]
    if isinstance(b, Exception):
        unavailable(f"the emulated aarch64 board could not be prepared: {b}")
    return b


def staged_package(tmp_path_factory) -> Path:
    """The runner's pure-python ``ibert_tvm`` files, copied for the board's PYTHONPATH."""
    if "pkg" not in _cache:
        from ibert_tvm.deploy.board import stage_package

        _cache["pkg"] = stage_package(tmp_path_factory.mktemp("board-pkg"))
    return _cache["pkg"]


def arm_out(quantized_factory, tmp_path_factory, arch: str = "BertModel") -> Path:
    """The tiny model compiled for ``--target aarch64`` (cross-linked), once per test run: shared
    by the xdist workers (conftest ``shared_build``; test_aarch64, test_bundle, test_rpc and
    test_verify_artifact each ask for it and may run on different workers)."""
    need_tools("aarch64-linux-gnu-g++")
    key = ("arm", arch)
    if key not in _cache:
        from conftest import shared_build
        from ibert_tvm.deploy.export import compile_quantized

        d, _ = shared_build(tmp_path_factory, f"out-arm-{arch}",
                            lambda d: compile_quantized(quantized_factory(arch)[0], d / "out", target="aarch64",
                                                        log=lambda *a: None))
        _cache[key] = d / "out"
    return _cache[key]


def batches(manifest: dict, shapes, seed: int = 0) -> list[dict[str, np.ndarray]]:
    from conftest import random_batch

    rng = np.random.default_rng(seed)
    m = manifest
    out = [random_batch(rng, b, s, vocab=m["vocab"], family=m["family"], pad_id=m["pad_id"],
                        type_vocab=m["type_vocab"]) for b, s in shapes]
    return [{k: v for k, v in x.items() if k in m["inputs"]} for x in out]  # only the model's own inputs


def run_on_board(brd, pkg: Path, out: Path, batch_list, tmp_path: Path, *, cpu: str = "max",
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m ibert_tvm.deploy.run OUT --ids-json F --print-ints`` on the board."""
    f = tmp_path / "ids.json"
    f.write_text(json.dumps([{k: v.tolist() for k, v in b.items()} for b in batch_list]))
    return brd.run(["-m", "ibert_tvm.deploy.run", str(out), "--ids-json", str(f), "--print-ints"],
                   cpu=cpu, pythonpath=[pkg], timeout=timeout)
