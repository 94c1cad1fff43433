"""The serial/parallel threshold table a load feeds (deploy/runtime.py ``serial_table``,
``apply_serial_table``; schedules/serial_when_small.py makes the thresholds run-time data):

* the choice: ``serial_thresholds=`` (``load``), else ``$IBERT_TVM_SERIAL_THRESHOLDS``, else
  "passive" when ``TVM_THREAD_POOL_SPIN_COUNT=0``, else "spin"; a bad value is refused naming the
  argument or the variable (the CLI: one ``error:`` line, exit 2);
* the x86 tiny BERT (``x86_compiled``): the table tensor ``forward`` reads holds the chosen table
  (params.npz keeps the spin one), through ``CompiledModel``, ``ibert_tvm.load`` and an RPC
  session (``RemoteModel``), and the outputs are the same integers;
* an artifact without the table (the llvm build, as every artifact compiled before it) loads
  and runs under any choice; a manifest whose table entry is malformed is refused.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cli_helpers import assert_user_error, cli
from conftest import random_batch

from ibert_tvm.deploy.runtime import SERIAL_ENV, SPIN_ENV, serial_table
from ibert_tvm.errors import IBertTVMError


@pytest.mark.parametrize("choice, env, want", [
    (None, {}, "spin"),
    (None, {SPIN_ENV: "0"}, "passive"),
    (None, {SPIN_ENV: " 0 "}, "passive"),
    (None, {SPIN_ENV: "300000"}, "spin"),
    (None, {SPIN_ENV: "1"}, "spin"),
    (None, {SERIAL_ENV: "passive"}, "passive"),
    (None, {SERIAL_ENV: "spin", SPIN_ENV: "0"}, "spin"),
    (None, {SERIAL_ENV: "", SPIN_ENV: "0"}, "passive"),  # empty: unset
    ("spin", {SERIAL_ENV: "passive", SPIN_ENV: "0"}, "spin"),
    ("passive", {}, "passive"),
])
def test_choice(choice, env, want):
    assert serial_table(choice, env)[0] == want


@pytest.mark.parametrize("choice, env, name", [
    ("fast", {}, "serial_thresholds"), ("Passive", {}, "serial_thresholds"),
    (None, {SERIAL_ENV: "sleep"}, SERIAL_ENV), (None, {SERIAL_ENV: "0"}, SERIAL_ENV),
])
def test_bad_choice_is_refused_naming_it(choice, env, name):
    with pytest.raises(IBertTVMError, match=f"{name} must be one of spin, passive, got"):
        serial_table(choice, env)


def _table_of(model):
    from ibert_tvm.schedules import serial_when_small as sws

    return np.from_dlpack(model._tvm_params[model.manifest["params"].index(sws.TABLE_PARAM)]).copy()


def _batches(qm):
    d = qm.dims
    rng = np.random.default_rng(2)
    return [random_batch(rng, b, s, family=d["family"], pad_id=d["pad_id"], type_vocab=d["type_vocab"])
            for b, s in [(1, 5), (3, 40)]]


def test_x86_model_is_fed_the_chosen_table(x86_compiled, quantized_factory, monkeypatch):
    from ibert_tvm import load
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.schedules import serial_when_small as sws

    spin, passive = sws.table("spin"), sws.table("passive")
    assert spin != passive
    monkeypatch.delenv(SERIAL_ENV, raising=False)
    monkeypatch.delenv(SPIN_ENV, raising=False)
    batches = _batches(quantized_factory("BertModel")[0])
    base = CompiledModel(x86_compiled)
    assert base.serial_thresholds == "spin" and _table_of(base).tolist() == spin
    want = [base.run_ids(x) for x in batches]
    cases = [({SPIN_ENV: "0"}, {}, passive), ({SPIN_ENV: "0", SERIAL_ENV: "spin"}, {}, spin),
             ({SERIAL_ENV: "passive"}, {}, passive), ({SPIN_ENV: "0"}, {"serial_thresholds": "spin"}, spin),
             ({}, {"serial_thresholds": "passive"}, passive)]
    for env, kw, table in cases:
        for k in (SERIAL_ENV, SPIN_ENV):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        for model in (CompiledModel(x86_compiled, **kw), load(x86_compiled, **kw).compiled):
            assert model.serial_thresholds == ("passive" if table == passive else "spin"), (env, kw)
            assert _table_of(model).tolist() == table, (env, kw)
            for x, w in zip(batches, want):
                np.testing.assert_array_equal(model.run_ids(x), w)
    with np.load(x86_compiled / "params.npz") as z:  # the file is never changed: the spin table
        assert z[f"p{len(base.manifest['params']) - 1:04d}"].tolist() == spin


def test_rpc_session_is_fed_the_chosen_table(x86_compiled, monkeypatch):
    """``RemoteModel`` (the board runner) feeds the table the host's environment chooses."""
    import tvm.rpc

    from ibert_tvm.deploy.rpc import RemoteModel
    from ibert_tvm.schedules import serial_when_small as sws

    monkeypatch.setenv(SPIN_ENV, "0")
    monkeypatch.delenv(SERIAL_ENV, raising=False)
    with RemoteModel(x86_compiled, tvm.rpc.LocalSession()) as remote:
        assert remote.serial_thresholds == "passive"
        assert remote.params[remote.manifest["params"].index(sws.TABLE_PARAM)].tolist() == sws.table("passive")
        x = _batches_for(remote.manifest)
        assert remote.run_ids(x).shape[0] == 2


def _batches_for(m):
    return random_batch(np.random.default_rng(0), 2, 6, family=m["family"], pad_id=m["pad_id"],
                        type_vocab=m["type_vocab"])


def test_artifact_without_a_table_loads_under_any_choice(compiled_factory, monkeypatch):
    """The llvm build has no parallel kernel, hence no table, like every artifact compiled before
    the table existed: it loads and runs whatever is chosen (a bad choice is still refused)."""
    from ibert_tvm.deploy.runtime import CompiledModel

    out = compiled_factory("BertModel")
    m = json.loads((out / "manifest.json").read_text())
    assert "serial_thresholds" not in m and all("serial_when_small" not in n for n in m["params"])
    monkeypatch.setenv(SPIN_ENV, "0")
    for kw in ({}, {"serial_thresholds": "spin"}, {"serial_thresholds": "passive"}):
        model = CompiledModel(out, **kw)
        assert model.serial_thresholds is None
        assert model.run_ids(_batches_for(m)).shape[0] == 2
    monkeypatch.setenv(SERIAL_ENV, "turbo")
    with pytest.raises(IBertTVMError, match=SERIAL_ENV):
        CompiledModel(out)


def test_cli_refuses_a_bad_choice(x86_compiled, monkeypatch, capsys):
    monkeypatch.setenv(SERIAL_ENV, "fastest")
    rc, _, err = cli(capsys, "run", x86_compiled, "A man is playing a guitar.")
    assert_user_error(rc, err, "run", SERIAL_ENV, "spin, passive", "'fastest'")
    assert err.count("error:") == 1


@pytest.mark.parametrize("damage, field", [
    (lambda st: st.update(passive=st["passive"][:-1]), "serial_thresholds.passive"),
    (lambda st: st.update(spin=[1.5] * len(st["spin"])), "serial_thresholds.spin"),
    (lambda st: st.update(param="nope"), "serial_thresholds"),
    (lambda st: st.update(classes=st["classes"] + ["extra"]), "serial_thresholds"),
])
def test_malformed_table_entry_is_refused(x86_compiled, tmp_path, damage, field):
    from ibert_tvm.deploy.runtime import CompiledModel

    out = tmp_path / "out"
    shutil.copytree(x86_compiled, out)
    m = json.loads((out / "manifest.json").read_text())
    damage(m["serial_thresholds"])
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IBertTVMError, match=field.replace(".", r"\.")):
        CompiledModel(out)
