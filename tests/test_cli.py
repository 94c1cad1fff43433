"""The ``ibert-tvm`` command line and its behaviour on bad input.

Project rule: bad input gets a clear error naming the problem, a non-zero exit code and no
half-written artifact (outputs are written to ``.<name>.tmp-*`` and renamed into place). Never a
silent wrong answer. Every command has ``--help``.

Everything goes through the real entry point ``ibert_tvm.cli.main`` (it returns 2 on a user
error and prints ``ibert-tvm <cmd>: error: ...``); a few cases run the ``ibert-tvm`` console
script and ``python -m ibert_tvm`` in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import assert_nothing_written, assert_user_error, cli, copy_dir
from ibert_tvm.cli import main

# -- --help ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [None, "calibrate", "compile", "run", "verify", "serve"])
def test_help(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ibert-tvm" + (f" {command}" if command else ""))
    if command is None:
        for c in ("calibrate", "compile", "run", "verify"):
            assert c in out


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "required" in capsys.readouterr().err


def test_python_m_help_subprocess():
    r = subprocess.run([sys.executable, "-m", "ibert_tvm", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ibert-tvm")
    assert "calibrate" in r.stdout and "verify" in r.stdout


def _console_script() -> str:
    exe = Path(sys.executable).parent / "ibert-tvm"
    if exe.is_file():
        return str(exe)
    found = shutil.which("ibert-tvm")
    if found is None:
        pytest.fail("the ibert-tvm console script is not installed (pip install -e .)")
    return found


@pytest.mark.parametrize("command", ["compile", "run"])
def test_console_script_help(command):
    r = subprocess.run([_console_script(), command, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: ibert-tvm {command}")


def test_console_script_error_exit_code(tmp_path):
    """A user error through the installed script: exit 2, one error line, nothing written."""
    out = tmp_path / "q"
    r = subprocess.run([_console_script(), "calibrate", str(tmp_path / "nope"), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "ibert-tvm calibrate: error: " in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    assert_nothing_written(out)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("ibert-tvm ")


# -- calibrate ------------------------------------------------------------------------------
def test_calibrate_missing_model_dir(tmp_path, capsys, text_file):
    out = tmp_path / "q"
    rc, _, err = cli(capsys, "calibrate", tmp_path / "missing", "-o", out, "--text", text_file)
    assert_user_error(rc, err, "calibrate", "missing", "does not exist")
    assert_nothing_written(out)


def test_calibrate_model_path_is_a_file(tmp_path, capsys, text_file):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0" * 16)
    out = tmp_path / "q"
    rc, _, err = cli(capsys, "calibrate", f, "-o", out, "--text", text_file)
    assert_user_error(rc, err, "calibrate", "model.bin", "not a directory")
    assert_nothing_written(out)


def test_calibrate_dir_without_config(tmp_path, capsys, text_file):
    m = tmp_path / "model"
    m.mkdir()
    (m / "tokenizer.json").write_text("{}")
    out = tmp_path / "q"
    rc, _, err = cli(capsys, "calibrate", m, "-o", out, "--text", text_file)
    assert_user_error(rc, err, "calibrate", "config.json")
    assert_nothing_written(out)


@pytest.mark.parametrize("config", [
    {"architectures": ["GPT2Model"], "model_type": "gpt2"},
    {"model_type": "bert"},  # no architectures at all
])
def test_calibrate_unsupported_architecture(config, tmp_path, capsys, text_file):
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text(json.dumps(config))
    out = tmp_path / "q"
    rc, _, err = cli(capsys, "calibrate", m, "-o", out, "--text", text_file)
    assert_user_error(rc, err, "calibrate", "unsupported architecture", "supported:")
    if "architectures" in config:
        assert "GPT2Model" in err
    from ibert_tvm.model.hf_loader import SUPPORTED

    for arch in SUPPORTED:
        assert arch in err
    assert_nothing_written(out)


@pytest.mark.parametrize("content", ["not json {", "[1, 2, 3]"])
def test_calibrate_corrupt_config(content, tmp_path, capsys, text_file):
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text(content)
    out = tmp_path / "q"
    rc, _, err = cli(capsys, "calibrate", m, "-o", out, "--text", text_file)
    assert_user_error(rc, err, "calibrate", "config.json")
    assert_nothing_written(out)


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"])
def test_calibrate_empty_text_file(content, tiny_factory, tmp_path, capsys):
    t = tmp_path / "empty.txt"
    t.write_bytes(content)
    out = tmp_path / "q"
    rc, _, err = cli(capsys, "calibrate", tiny_factory("BertModel"), "-o", out, "--text", t)
    assert_user_error(rc, err, "calibrate", "empty.txt", "empty")
    assert_nothing_written(out)


def test_calibrate_non_utf8_text_file(tiny_factory, tmp_path, capsys):
    t = tmp_path / "latin1.txt"
    t.write_bytes("Un caf\u00e9 cr\u00e8me, s'il vous pla\u00eet.\n".encode("latin-1"))
    out = tmp_path / "q"
    rc, _, err = cli(capsys, "calibrate", tiny_factory("BertModel"), "-o", out, "--text", t)
    assert_user_error(rc, err, "calibrate", "latin1.txt", "UTF-8")
    assert_nothing_written(out)


def test_calibrate_missing_text_file(tiny_factory, tmp_path, capsys):
    out = tmp_path / "q"
    rc, _, err = cli(capsys, "calibrate", tiny_factory("BertModel"), "-o", out, "--text", tmp_path / "nope.txt")
    assert_user_error(rc, err, "calibrate", "nope.txt", "does not exist")
    assert_nothing_written(out)


def test_calibrate_unknown_scheme(tiny_factory, tmp_path, capsys, text_file):
    out = tmp_path / "q"
    rc, _, err = cli(capsys, "calibrate", tiny_factory("BertModel"), "-o", out, "--text", text_file,
                     "--scheme", "ibert-w4a4")
    assert_user_error(rc, err, "calibrate", "ibert-w4a4", "unknown quantization scheme", "ibert-w8a8")
    assert_nothing_written(out)


@pytest.mark.parametrize("flag,value", [("-n", "0"), ("-n", "-5"), ("--batch-size", "0")])
def test_calibrate_non_positive_counts(flag, value, tiny_factory, tmp_path, capsys, text_file):
    """``-n -5`` must not silently drop the last 5 sentences; 0 must not mean "all" or "one"."""
    out = tmp_path / "q"
    with pytest.raises(SystemExit) as e:
        main(["calibrate", str(tiny_factory("BertModel")), "-o", str(out), "--text", str(text_file), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and value in err
    assert_nothing_written(out)


def test_calibrate_refuses_to_replace_a_foreign_directory(tiny_factory, tmp_path, capsys, text_file):
    """``-o`` pointing at a directory that is not an artifact (e.g. a home or source dir) is not wiped."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    rc, _, err = cli(capsys, "calibrate", tiny_factory("BertModel"), "-o", out, "--text", text_file, "-n", "4")
    assert_user_error(rc, err, "calibrate", str(out), "not")
    assert (out / "notes.txt").read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".project.tmp-", ".project.old-"))]


def test_calibrate_output_is_a_file(tiny_factory, tmp_path, capsys, text_file):
    out = tmp_path / "q"
    out.write_text("keep me")
    rc, _, err = cli(capsys, "calibrate", tiny_factory("BertModel"), "-o", out, "--text", text_file, "-n", "4")
    assert_user_error(rc, err, "calibrate", str(out), "not a directory")
    assert out.read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".q.tmp-", ".q.old-"))]


def test_calibrate_refuses_to_overwrite_its_input(tiny_factory, tmp_path, capsys, text_file):
    m = copy_dir(tiny_factory("BertModel"), tmp_path / "model")
    before = sorted(p.name for p in m.iterdir())
    rc, _, err = cli(capsys, "calibrate", m, "-o", m, "--text", text_file, "-n", "4")
    assert_user_error(rc, err, "calibrate", "model")
    assert sorted(p.name for p in m.iterdir()) == before


def test_calibrate_success(tiny_factory, tmp_path, capsys, text_file):
    from ibert_tvm.quantization.artifact import QuantizedModel

    out = tmp_path / "q"
    rc, stdout, err = cli(capsys, "calibrate", tiny_factory("BertModel"), "-o", out, "--text", text_file, "-n", "16")
    assert rc == 0, err
    assert "calibrating on 16 sentences" in stdout
    assert f"wrote {out}" in stdout
    assert (out / "quantization.json").is_file()
    assert (out / "quantized.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".q.")]
    qm = QuantizedModel.load(out)
    assert qm.source["architecture"] == "BertModel" and qm.dims["max_seq"] == 128
    # calibrating again replaces the artifact in place (atomically), no leftovers
    rc, _, err = cli(capsys, "calibrate", tiny_factory("BertModel"), "-o", out, "--text", text_file, "-n", "8")
    assert rc == 0, err
    assert (out / "quantization.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".q.")]


# -- compile --------------------------------------------------------------------------------
def test_compile_not_a_quantized_dir(tmp_path, capsys):
    q = tmp_path / "q"
    q.mkdir()
    (q / "readme.txt").write_text("hello")
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "compile", q, "-o", out)
    assert_user_error(rc, err, "compile", str(q), "quantization.json", "not a quantized model")
    assert_nothing_written(out)


def test_compile_missing_quantized_dir(tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "compile", tmp_path / "nope", "-o", out)
    assert_user_error(rc, err, "compile", "nope", "does not exist")
    assert_nothing_written(out)


@pytest.mark.parametrize("content,needle", [
    ("{ this is not json", "corrupt"),
    ("[1, 2, 3]", "corrupt"),
    ('{"format": "something-else/7"}', "format"),
    ('{"format": "ibert-tvm-quantized/1", "dims": {}}', "corrupt"),
])
def test_compile_corrupt_quantization_json(content, needle, quantized_factory, tmp_path, capsys):
    _, qdir = quantized_factory("BertModel")
    q = copy_dir(qdir, tmp_path / "q")
    (q / "quantization.json").write_text(content)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "compile", q, "-o", out)
    assert_user_error(rc, err, "compile", "quantization.json", needle)
    assert_nothing_written(out)


def test_compile_truncated_tensors(quantized_factory, tmp_path, capsys):
    _, qdir = quantized_factory("BertModel")
    q = copy_dir(qdir, tmp_path / "q")
    t = q / "quantized.safetensors"
    t.write_bytes(t.read_bytes()[:100])
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "compile", q, "-o", out)
    assert_user_error(rc, err, "compile", str(q), "corrupt")
    assert_nothing_written(out)


def test_compile_unknown_target(quantized_factory, tmp_path, capsys):
    _, q = quantized_factory("BertModel")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["compile", str(q), "-o", str(out), "--target", "riscv"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "riscv" in err and "invalid choice" in err
    from ibert_tvm.targets import TARGETS

    for name in TARGETS:
        assert name in err
    assert_nothing_written(out)


def test_compile_refuses_to_overwrite_its_input(quantized_factory, tmp_path, capsys):
    _, qdir = quantized_factory("BertModel")
    q = copy_dir(qdir, tmp_path / "q")
    rc, _, err = cli(capsys, "compile", q, "-o", q)
    assert_user_error(rc, err, "compile", str(q))
    assert (q / "quantization.json").is_file()




def _boom(ex, path, spec):
    path.write_bytes(b"\x7fELF half a library")  # a half-written .so in the temporary directory
    from ibert_tvm.errors import IBertTVMError

    raise IBertTVMError("simulated linker failure")


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing-out"])
def test_compile_failure_midway_leaves_nothing(existing, replay_build, quantized_factory, tmp_path, monkeypatch,
                                               capsys):
    monkeypatch.setattr("ibert_tvm.deploy.export.export_library", _boom)
    _, q = quantized_factory("BertModel")
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "manifest.json").write_text('{"format": "ibert-tvm-compiled/1", "old": true}')
        (out / "model.so").write_bytes(b"old library")
    rc, _, err = cli(capsys, "compile", q, "-o", out)
    assert_user_error(rc, err, "compile", "simulated linker failure")
    if existing:  # the previous out/ is untouched
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.so"]
        assert json.loads((out / "manifest.json").read_text())["old"] is True
        assert (out / "model.so").read_bytes() == b"old library"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    else:
        assert_nothing_written(out)


def test_compile_unexpected_exception_midway_leaves_nothing(replay_build, quantized_factory, tmp_path, monkeypatch):
    """A crash that is not a user error still propagates and still leaves no temporary directory."""

    def disk_full(ex, path, spec):
        path.write_bytes(b"\x7fELF")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ibert_tvm.deploy.export.export_library", disk_full)
    _, q = quantized_factory("BertModel")
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        main(["compile", str(q), "-o", str(out)])
    assert_nothing_written(out)


def test_compile_success(replay_build, quantized_factory, tmp_path, monkeypatch, capsys):
    from ibert_tvm.deploy.runtime import CompiledModel

    _, q = quantized_factory("BertModel")
    out = tmp_path / "out"
    rc, stdout, err = cli(capsys, "compile", q, "-o", out)
    assert rc == 0, err
    assert "max sequence 128" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.so", "params.npz", "tokenizer.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert CompiledModel(out).manifest["target"] == "llvm"
    rc, stdout, err = cli(capsys, "run", out, "A man is playing a guitar.")
    assert rc == 0 and "embedding[32]" in stdout, err


# -- run ------------------------------------------------------------------------------------
def test_run_sequence_too_long(compiled_factory, capsys):
    long_text = " ".join(["word"] * 300)
    rc, stdout, err = cli(capsys, "run", compiled_factory("BertModel"), "short one", long_text)
    assert_user_error(rc, err, "run", "tokens", "maximum sequence length is 128")
    assert "embedding" not in stdout  # nothing printed for the short text either: no partial answer


def test_run_pair_too_long(compiled_factory, capsys):
    half = " ".join(["word"] * 70)
    rc, _, err = cli(capsys, "run", compiled_factory("BertModel"), half, half, "--pair")
    assert_user_error(rc, err, "run", "maximum sequence length is 128")


def test_run_longest_allowed_text(compiled_factory, capsys):
    text = " ".join(["word"] * 126)  # + [CLS] + [SEP] = 128 tokens: exactly the maximum
    rc, stdout, err = cli(capsys, "run", compiled_factory("BertModel"), text)
    assert rc == 0, err
    assert "norm" in stdout


def test_run_no_texts(compiled_factory, capsys):
    rc, _, err = cli(capsys, "run", compiled_factory("BertModel"))
    assert_user_error(rc, err, "run", "at least one text")


@pytest.mark.parametrize("texts", [["one"], ["one", "two", "three"]])
def test_run_pair_needs_two_texts(texts, compiled_factory, capsys):
    rc, _, err = cli(capsys, "run", compiled_factory("BertModel"), *texts, "--pair")
    assert_user_error(rc, err, "run", "--pair", "exactly two")


def _break_manifest_garbage(d: Path):
    (d / "manifest.json").write_text("\x00\x01 not json")


def _break_manifest_not_object(d: Path):
    (d / "manifest.json").write_text("[]")


def _break_manifest_missing_keys(d: Path):
    m = json.loads((d / "manifest.json").read_text())
    del m["params"], m["max_seq"]
    (d / "manifest.json").write_text(json.dumps(m))


def _break_lib_missing(d: Path):
    (d / "model.so").unlink()


def _break_lib_replaced(d: Path):
    lib = d / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still a plausible library, but not the one compiled
    lib.write_bytes(bytes(data))


def _break_params_missing(d: Path):
    (d / "params.npz").unlink()


def _break_params_truncated(d: Path):
    p = d / "params.npz"
    p.write_bytes(p.read_bytes()[:200])


def _break_params_short(d: Path):
    import numpy as np

    with np.load(d / "params.npz") as z:
        arrays = {k: z[k] for k in list(z.files)[:-1]}
    np.savez(d / "params.npz", **arrays)


def _break_tokenizer_missing(d: Path):
    (d / "tokenizer.json").unlink()


def _break_tokenizer_garbage(d: Path):
    (d / "tokenizer.json").write_text('{"not": "a tokenizer"}')


BREAKAGES = {
    "manifest-garbage": (_break_manifest_garbage, ["manifest.json", "corrupt"]),
    "manifest-not-object": (_break_manifest_not_object, ["manifest.json"]),
    "manifest-missing-keys": (_break_manifest_missing_keys, ["manifest.json", "params"]),
    "model.so-missing": (_break_lib_missing, ["model.so", "missing"]),
    "model.so-replaced": (_break_lib_replaced, ["model.so", "sha256"]),
    "params-missing": (_break_params_missing, ["params.npz", "missing"]),
    "params-truncated": (_break_params_truncated, ["params.npz", "corrupt"]),
    "params-short": (_break_params_short, ["params.npz"]),
    "tokenizer-missing": (_break_tokenizer_missing, ["tokenizer.json"]),
    "tokenizer-garbage": (_break_tokenizer_garbage, ["tokenizer"]),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_run_corrupt_out(breakage, compiled_factory, tmp_path, capsys):
    brk, needles = BREAKAGES[breakage]
    out = copy_dir(compiled_factory("BertModel"), tmp_path / "out")
    brk(out)
    rc, stdout, err = cli(capsys, "run", out, "a sentence")
    assert_user_error(rc, err, "run", *needles)
    assert "embedding" not in stdout


def test_run_foreign_manifest(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "onnx-bundle/3", "model": "model.onnx"}))
    rc, _, err = cli(capsys, "run", out, "a sentence")
    assert_user_error(rc, err, "run", "not an ibert-tvm manifest", "ibert-tvm-compiled/1")


def test_run_on_a_quantized_dir(quantized_factory, capsys):
    _, q = quantized_factory("BertModel")
    rc, _, err = cli(capsys, "run", q, "a sentence")
    assert_user_error(rc, err, "run", "not an ibert-tvm compiled model", "manifest.json")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_run_not_a_directory(kind, tmp_path, capsys):
    p = tmp_path / "out"
    if kind == "file":
        p.write_text("x")
    rc, _, err = cli(capsys, "run", p, "a sentence")
    assert_user_error(rc, err, "run", str(p), "not a directory")


def test_run_embedding_success(compiled_factory, capsys):
    rc, stdout, err = cli(capsys, "run", compiled_factory("BertModel"), "A man is playing a guitar.",
                          "Someone plays the guitar.")
    assert rc == 0, err
    lines = stdout.splitlines()
    emb = [ln for ln in lines if "embedding[32]" in ln]
    assert len(emb) == 2 and all("norm" in ln for ln in emb)
    assert emb[0].startswith("'A man is playing a guitar.'")
    cos = [ln for ln in lines if ln.startswith("cosine(text 1, text 2) = ")]
    assert len(cos) == 1
    assert -1.0 <= float(cos[0].rsplit("=", 1)[1]) <= 1.0
    assert "integer-only" in lines[-1]


def test_run_classifier_success(compiled_factory, capsys):
    rc, stdout, err = cli(capsys, "run", compiled_factory("BertForSequenceClassification"), "What a lovely day.",
                          "This is awful.")
    assert rc == 0, err
    lines = stdout.splitlines()
    labels = [ln.split("\t") for ln in lines if "\t" in ln]
    assert [t for _, t in labels] == ["What a lovely day.", "This is awful."]
    assert all(lab in ("class0", "class1") for lab, _ in labels)
    assert sum("logits" in ln and "class0=" in ln and "class1=" in ln for ln in lines) == 2


def test_run_classifier_pair(compiled_factory, capsys):
    rc, stdout, err = cli(capsys, "run", compiled_factory("BertForSequenceClassification"), "A premise.",
                          "A hypothesis.", "--pair")
    assert rc == 0, err
    assert sum("\t" in ln for ln in stdout.splitlines()) == 1


# -- verify ---------------------------------------------------------------------------------
def test_verify_compiled(compiled_factory, capsys):
    rc, stdout, err = cli(capsys, "verify", compiled_factory("BertModel"))
    assert rc == 0, err
    assert stdout.rstrip().splitlines()[-1] == "float ops: 0"


@pytest.mark.parametrize("kind", ["empty-dir", "missing", "file"])
def test_verify_neither(kind, tmp_path, capsys):
    p = tmp_path / "thing"
    if kind == "empty-dir":
        p.mkdir()
    elif kind == "file":
        p.write_text("x")
    rc, _, err = cli(capsys, "verify", p)
    assert_user_error(rc, err, "verify", str(p), "neither")


def test_verify_corrupt_manifest(compiled_factory, tmp_path, capsys):
    out = copy_dir(compiled_factory("BertModel"), tmp_path / "out")
    (out / "manifest.json").write_text("garbage")
    rc, _, err = cli(capsys, "verify", out)
    assert_user_error(rc, err, "verify", "manifest.json", "corrupt")


def test_verify_missing_library(compiled_factory, tmp_path, capsys):
    out = copy_dir(compiled_factory("BertModel"), tmp_path / "out")
    (out / "model.so").unlink()
    rc, _, err = cli(capsys, "verify", out)
    assert_user_error(rc, err, "verify", "model.so", "missing")
