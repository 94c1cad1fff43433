"""The default size of TVM's thread pool (support/threads.py): the physical cores on x86-64 unless
the user set ``TVM_NUM_THREADS`` / ``OMP_NUM_THREADS``; TVM's own choice elsewhere or when the
topology cannot be read. And in a fresh process loading a real model with neither variable set,
the pool TVM starts has that many threads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ibert_tvm.support import threads as th


def _sysfs(tmp_path, topo: dict[int, tuple[int, int]]):
    for cpu, (pkg, core) in topo.items():
        d = tmp_path / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "physical_package_id").write_text(f"{pkg}\n")
        (d / "core_id").write_text(f"{core}\n")
    return tmp_path


@pytest.mark.parametrize("topo,cpus,want", [
    ({0: (0, 0), 1: (0, 1)}, {0, 1}, 2),  # two cores, one thread each (this machine)
    ({0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0, 1)}, {0, 1, 2, 3}, 2),  # SMT siblings count once
    ({0: (0, 0), 1: (1, 0)}, {0, 1}, 2),  # the same core id on two packages
    ({0: (0, 0), 1: (0, 1), 2: (0, 2)}, {0, 2}, 2),  # only the CPUs this process may use
])
def test_physical_cores_from_the_topology(tmp_path, topo, cpus, want):
    assert th.physical_cores(cpus, _sysfs(tmp_path, topo)) == want


def test_unreadable_topology_is_none(tmp_path):
    assert th.physical_cores({0, 1}, _sysfs(tmp_path, {0: (0, 0)})) is None  # cpu1 missing


def test_default_keeps_the_users_choice_and_other_machines():
    two = lambda: 2  # noqa: E731
    assert th.default_pool_threads({}, "x86_64", two) == (2, "2 physical cores")
    assert th.default_pool_threads({"TVM_NUM_THREADS": "3"}, "x86_64", two) == (None, "TVM_NUM_THREADS=3")
    assert th.default_pool_threads({"OMP_NUM_THREADS": "5"}, "x86_64", two) == (None, "OMP_NUM_THREADS=5")
    assert th.default_pool_threads({"TVM_NUM_THREADS": " "}, "x86_64", two)[0] == 2  # empty: unset
    assert th.default_pool_threads({}, "aarch64", two) == (None, "TVM's default (aarch64)")
    assert th.default_pool_threads({}, "x86_64", lambda: None) == (None, "TVM's default (no CPU topology)")
    env = {"OMP_NUM_THREADS": "4"}
    assert th.apply_default_pool_threads(env) == "TVM threads: OMP_NUM_THREADS=4" and "TVM_NUM_THREADS" not in env
    env = {}
    th.apply_default_pool_threads(env)
    assert env.get("TVM_NUM_THREADS") == (str(th.physical_cores()) if th.physical_cores() and
                                          th.platform.machine() == "x86_64" else None)


_LOAD = """
import sys
import numpy as np
import tvm_ffi
from ibert_tvm.deploy.runtime import CompiledModel
m = CompiledModel(sys.argv[1])
b, s = 2, 9
x = {"input_ids": np.full((b, s), 5, np.int32), "attention_mask": np.ones((b, s), np.int32),
     "token_type_ids": np.zeros((b, s), np.int32), "position_ids": np.tile(np.arange(s, dtype=np.int32), (b, 1))}
m.run_ids({k: v for k, v in x.items() if k in m.manifest["inputs"]})
print(m.threads_note)
print(tvm_ffi.get_global_func("runtime.NumThreads")())
"""


@pytest.mark.skipif(th.platform.machine() != "x86_64" or th.physical_cores() is None,
                    reason="the default applies on x86-64 with a readable CPU topology")
def test_fresh_process_pool_has_the_physical_cores(x86_compiled):
    env = {k: v for k, v in os.environ.items() if k not in th.THREADS_ENV}
    r = subprocess.run([sys.executable, "-c", _LOAD, str(x86_compiled)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    note, n = r.stdout.strip().splitlines()[-2:]
    assert note == f"TVM threads: {th.physical_cores()} physical cores"
    assert int(n) == th.physical_cores()
