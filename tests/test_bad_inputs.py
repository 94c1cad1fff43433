"""Damaged, incomplete or foreign inputs: never a silent wrong answer, never a traceback.

Each row of the tables below damages a copy of a quantized ``q/`` or a compiled ``out/`` (or
passes a bad argument) and runs the real CLI in-process. Every row must give exit 2, one
``ibert-tvm CMD: error: ...`` line naming the file and the field, no traceback, and (for
``compile -o``) no output directory left behind.

Some rows come in two forms: the damage alone (caught by the sha256 recorded for every file),
and the damage with the recorded hashes updated to match ("rehashed": a consistent but wrong
artifact, as a buggy tool or a hand edit would make), which the field checks must catch.

The checkpoint tests (missing, unexpected and non-finite weights) damage a tiny Hugging Face
model directory and run ``calibrate``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_nothing_written, assert_user_error, cli, copy_dir

ROOT = Path(__file__).resolve().parents[1]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_json(path: Path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


# -- q/ damage -------------------------------------------------------------------------------
def _rehash_q(q: Path) -> None:
    """Make quantization.json's recorded file hashes match the (damaged) files."""
    _edit_json(q / "quantization.json",
               lambda m: m.get("files", {}).update({n: _sha256(q / n) for n in m.get("files", {})}))


def _meta(edit):
    return lambda q: _edit_json(q / "quantization.json", edit)


def _set_scale(name, value):
    return _meta(lambda m: m["scales"].__setitem__(name, value))


def _set_dim(name, value):
    return _meta(lambda m: m["dims"].__setitem__(name, value))


def _tensors(edit, rehash: bool):
    def damage(q: Path):
        from safetensors.numpy import load_file, save_file

        t = load_file(str(q / "quantized.safetensors"))
        edit(t)
        save_file(t, str(q / "quantized.safetensors"))
        if rehash:
            _rehash_q(q)

    return damage


def _nan_gamma(t):
    g = t["encoder.layer.0.attention.output.LayerNorm.gamma"].copy()
    g[3] = np.nan
    t["encoder.layer.0.attention.output.LayerNorm.gamma"] = g


def _swap_query_key(t):
    a, b = "encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.self.key.weight"
    t[a], t[b] = t[b], t[a]


def _drop_bias(t):
    del t["encoder.layer.1.output.dense.bias"]


def _bias_as_int8(t):
    t["encoder.layer.1.output.dense.bias"] = t["encoder.layer.1.output.dense.bias"].astype(np.int8)


def _unlowercase(path: Path) -> None:
    _edit_json(path, lambda t: t["normalizer"].__setitem__("lowercase", False))


def _q_tokenizer_edited(q: Path):
    _unlowercase(q / "tokenizer.json")


def _q_no_file_hashes(q: Path):  # an artifact written before file hashes were recorded
    _edit_json(q / "quantization.json", lambda m: m.pop("files", None))


def _q_scale_channel_nan(q: Path):
    def edit(m):
        m["scales"]["layer0.ln1"][2] = math.nan

    _edit_json(q / "quantization.json", edit)


Q_ROWS = {
    # scales: negative, NaN, inf, 0, a string, missing, a bad channel
    "scale-negative": (_set_scale("layer0.q", -0.5), ["quantization.json", "scales.layer0.q"]),
    "scale-nan": (_set_scale("layer0.k", math.nan), ["quantization.json", "scales.layer0.k"]),
    "scale-inf": (_set_scale("embeddings.sum", math.inf), ["quantization.json", "scales.embeddings.sum"]),
    "scale-zero": (_set_scale("layer1.ctx", 0.0), ["quantization.json", "scales.layer1.ctx"]),
    "scale-string": (_set_scale("layer0.res1", "0.5"), ["quantization.json", "scales.layer0.res1"]),
    "scale-missing": (_meta(lambda m: m["scales"].pop("layer0.v")), ["quantization.json", "scales.layer0.v"]),
    "scale-channel-nan": (_q_scale_channel_nan, ["quantization.json", "scales.layer0.ln1"]),
    "scale-unknown": (_set_scale("layer7.q", 0.1), ["quantization.json", "scales.layer7.q"]),
    # dims: deleted, changed, unknown values, absurd sizes
    "dims-hidden-deleted": (_meta(lambda m: m["dims"].pop("hidden")), ["quantization.json", "dims.hidden"]),
    "dims-hidden-changed": (_set_dim("hidden", 64), ["quantization.json", "dims.hidden"]),
    "dims-family-gpt": (_set_dim("family", "gpt"), ["quantization.json", "dims.family", "gpt"]),
    "dims-head-unknown": (_set_dim("head", "decoder"), ["quantization.json", "dims.head", "decoder"]),
    "dims-vocab-absurd": (_set_dim("vocab", 10**12), ["quantization.json", "dims.vocab"]),
    "dims-layers-string": (_set_dim("layers", "2"), ["quantization.json", "dims.layers"]),
    "dims-not-object": (_meta(lambda m: m.__setitem__("dims", [32])), ["quantization.json", "dims"]),
    # tensors: damaged (file hash), or rehashed (field checks)
    "gamma-nan": (_tensors(_nan_gamma, False), ["quantized.safetensors", "sha256"]),
    "gamma-nan-rehashed": (_tensors(_nan_gamma, True),
                           ["quantized.safetensors", "encoder.layer.0.attention.output.LayerNorm.gamma", "finite"]),
    "tensors-swapped": (_tensors(_swap_query_key, False), ["quantized.safetensors", "sha256"]),
    "tensor-missing-rehashed": (_tensors(_drop_bias, True), ["quantized.safetensors", "encoder.layer.1.output.dense.bias"]),
    "tensor-dtype-rehashed": (_tensors(_bias_as_int8, True),
                              ["quantized.safetensors", "encoder.layer.1.output.dense.bias", "int32"]),
    "tokenizer-edited": (_q_tokenizer_edited, ["tokenizer.json", "sha256"]),
    "no-file-hashes": (_q_no_file_hashes, ["quantization.json", "files", "ibert-tvm calibrate"]),
    "files-not-object": (_meta(lambda m: m.__setitem__("files", "all good")), ["quantization.json", "files"]),
}


@pytest.mark.parametrize("row", list(Q_ROWS))
def test_compile_refuses_a_damaged_quantized_dir(row, replay_build, quantized_factory, tmp_path, capsys):
    damage, needles = Q_ROWS[row]
    q = copy_dir(quantized_factory("BertModel")[1], tmp_path / "q")
    damage(q)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "compile", q, "-o", out)
    assert_user_error(rc, err, "compile", *needles)
    assert len(err.strip().splitlines()) == 1, err
    assert_nothing_written(out)


# -- tuning database metadata ----------------------------------------------------------------
def _tuning_db(root: Path, identity: str, meta_edit) -> Path:
    from ibert_tvm.tuning import FORMAT, META, RECORDS, WORKLOADS

    d = root / "db"
    d.mkdir()
    for n in (WORKLOADS, RECORDS):
        (d / n).write_text("")
    meta = {"format": FORMAT, "target": "llvm", "identity": identity,
            "sha256": {WORKLOADS: _sha256(d / WORKLOADS), RECORDS: _sha256(d / RECORDS)}, "groups": {}}
    meta_edit(meta)
    (d / META).write_text(json.dumps(meta))
    return d


TUNING_ROWS = {
    "sha256-string": (lambda m: m.__setitem__("sha256", "deadbeef"), ["ibert_tvm_tuning.json", "sha256"]),
    "sha256-list": (lambda m: m.__setitem__("sha256", ["deadbeef"]), ["ibert_tvm_tuning.json", "sha256"]),
    "sha256-value-number": (lambda m: m["sha256"].__setitem__("database_workload.json", 5),
                            ["ibert_tvm_tuning.json", "sha256"]),
    "baselines-list": (lambda m: m.__setitem__("baselines", ["0" * 16]), ["ibert_tvm_tuning.json", "baselines"]),
    "baselines-value-number": (lambda m: m.__setitem__("baselines", {"ab": 5}), ["ibert_tvm_tuning.json", "baselines"]),
    "in-model-string": (lambda m: m.__setitem__("in_model", "kept"), ["ibert_tvm_tuning.json", "in_model"]),
    "in-model-kept-string": (lambda m: m.__setitem__("in_model", {"kept": "yes"}), ["ibert_tvm_tuning.json", "in_model"]),
    "in-model-speedup-text": (lambda m: m.__setitem__("in_model", {"kept": False, "speedup": ["fast"]}),
                              ["ibert_tvm_tuning.json", "in_model"]),
}


@pytest.mark.parametrize("row", list(TUNING_ROWS))
def test_compile_refuses_a_bad_tuning_meta(row, replay_build, quantized_factory, tmp_path, capsys):
    edit, needles = TUNING_ROWS[row]
    qm, q = quantized_factory("BertModel")
    db = _tuning_db(tmp_path, qm.identity, edit)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "compile", q, "-o", out, "--database", db)
    assert_user_error(rc, err, "compile", *needles)
    assert_nothing_written(out)


# -- out/ damage -----------------------------------------------------------------------------
def _rehash_out(out: Path) -> None:
    """Make manifest.json's recorded file hashes match the (damaged) files."""
    def edit(m):
        for n in m.get("files", {}):
            m["files"][n] = _sha256(out / n)
        m["lib_sha256"] = _sha256(out / "model.so")

    _edit_json(out / "manifest.json", edit)


def _manifest(edit):
    return lambda out: _edit_json(out / "manifest.json", edit)


def _params(edit, rehash: bool):
    def damage(out: Path):
        with np.load(out / "params.npz") as z:
            arrays = {k: z[k] for k in z.files}
        edit(arrays)
        np.savez(out / "params.npz", **arrays)
        if rehash:
            _rehash_out(out)

    return damage


def _swap_same_shape(arrays):
    by_type: dict = {}
    for k, v in arrays.items():
        by_type.setdefault((v.shape, v.dtype.str), []).append(k)
    a, b = next(ks[:2] for ks in by_type.values() if len(ks) >= 2 and not np.array_equal(arrays[ks[0]], arrays[ks[1]]))
    arrays[a], arrays[b] = arrays[b], arrays[a]


def _other_model_shapes(arrays):
    """Another model's parameters: the same names, other shapes (a smaller vocabulary)."""
    k = next(k for k, v in arrays.items() if v.ndim == 2 and v.shape[0] == 30522)
    arrays[k] = arrays[k][:1000]


def _out_tokenizer_edited(out: Path):
    _unlowercase(out / "tokenizer.json")


def _not_a_tvm_module(rehash: bool):
    def damage(out: Path):
        src = out / "f.c"
        src.write_text("double f(double x) { return x * 2.0; }\n")
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out / "model.so"), str(src)], check=True)
        src.unlink()
        if rehash:
            _rehash_out(out)

    return damage


def _out_no_file_hashes(out: Path):  # an out/ written before file hashes were recorded
    _edit_json(out / "manifest.json", lambda m: m.pop("files", None))


OUT_ROWS = {
    "params-swapped": (_params(_swap_same_shape, False), ["params.npz", "sha256"]),
    "params-other-model": (_params(_other_model_shapes, False), ["params.npz", "sha256"]),
    "params-other-model-rehashed": (_params(_other_model_shapes, True), ["params.npz", "p0000", "shape"]),
    "tokenizer-edited": (_out_tokenizer_edited, ["tokenizer.json", "sha256"]),
    "lib-not-tvm": (_not_a_tvm_module(False), ["model.so", "sha256"]),
    "lib-not-tvm-rehashed": (_not_a_tvm_module(True), ["model.so", "tvm"]),
    "no-file-hashes": (_out_no_file_hashes, ["manifest.json", "files", "ibert-tvm compile"]),
    "verify-not-object": (_manifest(lambda m: m.__setitem__("verify", "passed")), ["manifest.json", "verify"]),
    "family-gpt": (_manifest(lambda m: m.__setitem__("family", "gpt")), ["manifest.json", "family", "gpt"]),
    "vocab-absurd": (_manifest(lambda m: m.__setitem__("vocab", 10**9)), ["manifest.json", "vocab"]),
    "max-seq-string": (_manifest(lambda m: m.__setitem__("max_seq", "128")), ["manifest.json", "max_seq"]),
    "output-scale-nan": (_manifest(lambda m: m["output"].__setitem__("scale", math.nan)),
                         ["manifest.json", "output.scale"]),
    "output-not-object": (_manifest(lambda m: m.__setitem__("output", 1.0)), ["manifest.json", "output"]),
    "tokenizer-outside": (_manifest(lambda m: m.__setitem__("tokenizer", "../../tokenizer.json")),
                          ["manifest.json", "tokenizer"]),
    "param-types-missing": (_manifest(lambda m: m.pop("param_types", None)), ["manifest.json", "param_types"]),
}


@pytest.mark.parametrize("row", list(OUT_ROWS))
def test_run_refuses_a_damaged_compiled_dir(row, compiled_factory, tmp_path, capsys):
    damage, needles = OUT_ROWS[row]
    out = copy_dir(compiled_factory("BertModel"), tmp_path / "out")
    damage(out)
    rc, stdout, err = cli(capsys, "run", out, "A man is playing a guitar.")
    assert_user_error(rc, err, "run", *needles)
    assert len(err.strip().splitlines()) == 1, err
    assert "embedding" not in stdout


@pytest.mark.parametrize("row", list(OUT_ROWS))
def test_serve_refuses_a_damaged_compiled_dir(row, compiled_factory, tmp_path, capsys):
    """``serve`` loads through the same checks as ``run``, before it listens on anything."""
    damage, needles = OUT_ROWS[row]
    out = copy_dir(compiled_factory("BertModel"), tmp_path / "out")
    damage(out)
    rc, _, err = cli(capsys, "serve", out, "--port", "0")
    assert_user_error(rc, err, "serve", *needles)
    assert len(err.strip().splitlines()) == 1, err


def _listening_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_serve_bad_inputs(compiled_factory, tmp_path, capsys):
    """Every row: exit 2, one ``ibert-tvm serve: error:`` line naming the problem, no server left."""
    out = compiled_factory("BertModel")
    rc, _, err = cli(capsys, "serve", tmp_path / "missing")
    assert_user_error(rc, err, "serve", "missing", "not a directory")
    busy = _listening_port()
    try:
        port = busy.getsockname()[1]
        rc, _, err = cli(capsys, "serve", out, "--port", port)
        assert_user_error(rc, err, "serve", f"cannot listen on 127.0.0.1:{port}", "in use")
    finally:
        busy.close()
    rc, _, err = cli(capsys, "serve", out, "--port", "0", "--host", "203.0.113.7")  # not this machine's
    assert_user_error(rc, err, "serve", "cannot listen on 203.0.113.7:0")
    assert "warning: listening on 203.0.113.7 with no authentication" in err  # not loopback, no --api-key
    rc, _, err = cli(capsys, "serve", out, "--port", "0", "--max-batch-tokens", "64")
    assert_user_error(rc, err, "serve", "--max-batch-tokens 64", "maximum sequence length 128")
    rc, _, err = cli(capsys, "serve", out, "--port", "0", "--api-key", " ")
    assert_user_error(rc, err, "serve", "--api-key is empty")


@pytest.mark.parametrize("flag,value", [("--port", "70000"), ("--port", "http"), ("--port", "-1"),
                                        ("--max-batch-tokens", "0"), ("--max-client-batch-size", "-2")])
def test_serve_bad_numbers_are_usage_errors(flag, value, compiled_factory, capsys):
    from ibert_tvm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", str(compiled_factory("BertModel")), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "ibert-tvm serve: error: argument " + flag in err and value in err and "Traceback" not in err


def test_run_refuses_a_non_utf8_text_argument(compiled_factory, capsys):
    """``ibert-tvm run out "$(printf 'caf\\xe9')"``: Python hands the byte 0xe9 over as a lone surrogate."""
    rc, stdout, err = cli(capsys, "run", compiled_factory("BertModel"), "fine", os.fsdecode(b"caf\xe9"))
    assert_user_error(rc, err, "run", "text 2", "UTF-8", "0xe9")
    assert "embedding" not in stdout


def test_damaged_library_without_lib_sha256_is_an_error_not_a_crash(compiled_factory, tmp_path):
    """A manifest without ``lib_sha256`` and a damaged model.so used to segfault (exit 139):
    run in a subprocess so that a crash is a test failure, not the end of the test session."""
    out = copy_dir(compiled_factory("BertModel"), tmp_path / "out")
    _edit_json(out / "manifest.json", lambda m: m.pop("lib_sha256"))
    lib = out / "model.so"
    data = bytearray(lib.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 4096):
        data[i] ^= 0x5A
    lib.write_bytes(bytes(data))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "ibert_tvm", "run", str(out), "a sentence"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "ibert-tvm run: error: " in res.stderr and "model.so" in res.stderr
    assert "Traceback" not in res.stderr


def test_every_file_is_hashed(quantized_factory, compiled_factory):
    """The recorded hashes cover every file of q/ and out/ but the one holding them."""
    from ibert_tvm.support.hashing import sha256_file

    q = quantized_factory("BertModel")[1]
    files = json.loads((q / "quantization.json").read_text())["files"]
    assert sorted(files) == sorted(p.name for p in q.iterdir() if p.name != "quantization.json")
    assert all(files[n] == sha256_file(q / n) for n in files)
    out = compiled_factory("BertModel")
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["files"]) == sorted(p.name for p in out.iterdir() if p.name != "manifest.json")
    assert all(m["files"][n] == sha256_file(out / n) for n in m["files"])
    assert m["lib_sha256"] == m["files"]["model.so"]


# -- Hugging Face checkpoints: missing, unexpected and non-finite weights --------------------
def _edit_checkpoint(model_dir: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    f = model_dir / "model.safetensors"
    t = load_file(str(f))
    edit(t)
    save_file(t, str(f), metadata={"format": "pt"})


def _calibrate(capsys, model_dir: Path, tmp_path: Path):
    text = tmp_path / "calib.txt"
    text.write_text("A man is playing a guitar.\nThe committee approved the new budget.\n", encoding="utf-8")
    out = tmp_path / "q"
    rc, _, err = cli(capsys, "calibrate", model_dir, "-o", out, "--text", text)
    return rc, err, out


def _drop(prefix):
    def edit(t):
        for k in [k for k in t if k.startswith(prefix)]:
            del t[k]

    return edit


BAD_CHECKPOINTS = {
    "layer-missing": ("BertModel", _drop("encoder.layer.1."), ["missing", "encoder.layer.1.attention.self.query.weight"]),
    "classifier-missing": ("BertForSequenceClassification", _drop("classifier."), ["missing", "classifier.weight"]),
    "roberta-layernorm-missing": ("RobertaModel", _drop("encoder.layer.0.output.LayerNorm."),
                                  ["missing", "encoder.layer.0.output.LayerNorm.weight"]),
    "unexpected": ("BertModel", lambda t: t.__setitem__("encoder.layer.2.output.dense.weight", np.ones((4, 4), np.float32)),
                   ["unexpected", "encoder.layer.2.output.dense.weight"]),
}


@pytest.mark.parametrize("row", list(BAD_CHECKPOINTS))
def test_calibrate_refuses_missing_or_unexpected_weights(row, tiny_factory, tmp_path, capsys):
    arch, edit, needles = BAD_CHECKPOINTS[row]
    model = copy_dir(tiny_factory(arch), tmp_path / "model")
    _edit_checkpoint(model, edit)
    rc, err, out = _calibrate(capsys, model, tmp_path)
    assert_user_error(rc, err, "calibrate", "model.safetensors", *needles)
    assert_nothing_written(out)


def _saved_buffers(t):
    t["embeddings.position_ids"] = np.arange(128, dtype=np.int64)[None]
    t["embeddings.token_type_ids"] = np.zeros((1, 128), dtype=np.int64)


@pytest.mark.parametrize("edit", [_drop("pooler."), _saved_buffers], ids=["no-pooler", "saved-buffers"])
def test_calibrate_accepts_legitimate_checkpoint_differences(edit, tiny_factory, tmp_path, capsys):
    """Not missing or unexpected weights: sentence-embedding checkpoints are often saved without
    the pooler (mean pooling never uses it), and older ones hold the buffers the model computes."""
    model = copy_dir(tiny_factory("BertModel"), tmp_path / "model")
    _edit_checkpoint(model, edit)
    rc, err, out = _calibrate(capsys, model, tmp_path)
    assert rc == 0, err
    assert (out / "quantization.json").is_file()


def test_the_default_and_tiny_checkpoints_load_cleanly(tiny_factory):
    """Nothing legitimate is refused: the bundled model and every tiny architecture."""
    from ibert_tvm.model.hf_loader import SUPPORTED, load_checkpoint

    assert load_checkpoint("default").architecture == "BertModel"
    for arch in SUPPORTED:
        assert load_checkpoint(tiny_factory(arch)).architecture == arch


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_calibrate_names_a_non_finite_weight(value, tiny_factory, tmp_path, capsys):
    model = copy_dir(tiny_factory("BertModel"), tmp_path / "model")

    def edit(t):
        w = t["encoder.layer.0.attention.self.query.weight"].copy()
        w[1, 2] = value
        t["encoder.layer.0.attention.self.query.weight"] = w

    _edit_checkpoint(model, edit)
    rc, err, out = _calibrate(capsys, model, tmp_path)
    assert_user_error(rc, err, "calibrate", "model.safetensors", "encoder.layer.0.attention.self.query.weight",
                      "not finite")
    assert "calibration saw no non-zero values" not in err
    assert_nothing_written(out)


# -- eval --task fidelity ----------------------------------------------------------------------
def _fidelity_files(tmp: Path) -> None:
    (tmp / "empty.txt").write_text("\n  \n", encoding="utf-8")
    (tmp / "latin1.txt").write_bytes("Caf\xe9 au lait\n".encode("latin-1"))
    (tmp / "ok.txt").write_text("A short sentence.\n", encoding="utf-8")
    (tmp / "nothing").mkdir()


FIDELITY_ROWS = {
    "text-missing": (["--text", "{tmp}/none.txt"], ["--text", "none.txt", "does not exist"]),
    "text-empty": (["--text", "{tmp}/empty.txt"], ["--text", "empty.txt", "empty"]),
    "text-not-utf8": (["--text", "{tmp}/latin1.txt"], ["--text", "latin1.txt", "UTF-8"]),
    "text-without-fidelity": (["--text", "{tmp}/ok.txt", "--task", "stsb"], ["--text", "--task fidelity"]),
    "text-with-per-slice": (["--text", "{tmp}/ok.txt", "--per-slice", "5"], ["--per-slice", "--text"]),
    "artifact-neither": (["--text", "{tmp}/ok.txt", "--artifact", "{tmp}/nothing"],
                         ["--artifact", "nothing", "neither a compiled out/"]),
    "artifact-other-model": (["--text", "{tmp}/ok.txt", "--artifact", "{q}", "--model", "{other}"],
                             ["was not calibrated from", "source.model_hash"]),
    "classifier-model": (["--text", "{tmp}/ok.txt", "--model", "{clf}"], ["classifier", "embedding model"]),
    "output-not-json": (["--text", "{tmp}/ok.txt", "-o", "{tmp}/r.txt"], ["--output", "r.txt", ".json"]),
}


@pytest.mark.parametrize("row", list(FIDELITY_ROWS))
def test_eval_fidelity_refuses_bad_input(row, tiny_factory, quantized_factory, tmp_path, capsys):
    argv, needles = FIDELITY_ROWS[row]
    _fidelity_files(tmp_path)
    fill = dict(tmp=tmp_path, q=quantized_factory("BertModel")[1] if "{q}" in argv else "",
                other=tiny_factory("BertModel", seed=3) if "{other}" in argv else "",
                clf=tiny_factory("BertForSequenceClassification") if "{clf}" in argv else "")
    argv = [a.format(**fill) for a in argv]
    if "--task" not in argv:
        argv = ["--task", "fidelity", *argv]
    if "--model" not in argv:
        argv += ["--model", str(tiny_factory("BertModel"))]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "r.json")]
    rc, _, err = cli(capsys, "eval", *argv)
    assert_user_error(rc, err, "eval", *needles)
    assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err  # (transformers' load bar aside)
    assert_nothing_written(tmp_path / "r.json")
