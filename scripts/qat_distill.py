"""QAT as embedding distillation: train the integer-only model toward the frozen FP32 model's
pooled embedding, on broad text, and write the quantized artifact (docs/fidelity.md, "QAT as
embedding distillation").

    pip install faker==40.63.0
    python scripts/mixed_calibration_text.py --long 3 -n 400 -o train.txt
    python scripts/qat_distill.py default --text train.txt -o q-qat/
    ibert-tvm compile q-qat/ --target x86 --no-tuning -o out-qat/
    ibert-tvm eval --task fidelity --model default --artifact out-qat/ -o fid-qat.json

The start is the post-training artifact (``--init Q``, or the default calibration: 300 STS-B train
sentences with the default scheme, ``--softmax-bits`` as in ``calibrate``). Each step runs the
deployed integer model (``quantization/qat.py``: the golden executor's arithmetic, STE gradients
through the FP32 model) and minimises 1 - cos(integer pooled embedding, FP32 pooled embedding);
the teacher is the original, frozen FP32 model. The written q/ has the same scheme, shapes and
kernels as the PTQ one: only weights, biases and scales change.

Before training, every training sentence is checked against the fidelity probe set
(``ibert_tvm.probe``, exact match after stripping): any overlap is refused, so the probe set
stays held out. ``--no-probe-check`` skips this (when the probe sources are not cached).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parser() -> argparse.ArgumentParser:
    from ibert_tvm.cli.argtypes import positive_int

    p = argparse.ArgumentParser(prog="qat_distill.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="Hugging Face model directory of an embedding model, or 'default' (all-MiniLM-L6-v2)")
    p.add_argument("-o", "--output", required=True, help="output directory for the QAT'd quantized artifact (q/)")
    p.add_argument("--text", action="append", required=True, metavar="FILE",
                   help="training text, one sentence per line (UTF-8); repeatable")
    p.add_argument("--init", metavar="Q", help="start from this quantized artifact (default: calibrate the model "
                   "on 300 STS-B train sentences with the default scheme)")
    p.add_argument("--softmax-bits", type=int, choices=range(8, 17), metavar="{8..16}",
                   help="i-softmax output bits of the default calibration (as `calibrate --softmax-bits`)")
    p.add_argument("--steps", type=positive_int, help="stop after this many optimizer steps (default: one pass)")
    p.add_argument("--epochs", type=positive_int, default=1, help="passes over the training text (default 1)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="sentences per step (default 16)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--freeze-ranges", action="store_true",
                   help="keep the start's activation ranges (train weights only); by default QAT updates them as an "
                   "EMA of per-batch maxima (momentum 0.95), which shrank MiniLM's LayerNorm ranges by ~15%% and lost "
                   "fidelity (docs/fidelity.md)")
    p.add_argument("--no-probe-check", action="store_true",
                   help="skip the exact-match check of the training text against the fidelity probe set")
    return p


class _Log:
    """A progress wrapper that prints one line per step (elapsed seconds, the loss postfix): the
    runs are long and usually not on a terminal."""

    def __init__(self, desc: str, every: int = 1):
        self.desc, self.every, self.post = desc, every, ""

    def __call__(self, it):
        self.items = list(it)
        return self

    def __iter__(self):
        t0 = time.time()
        for i, x in enumerate(self.items):
            yield x
            if (i + 1) % self.every == 0 or i + 1 == len(self.items):
                print(f"{self.desc} {i + 1}/{len(self.items)} {time.time() - t0:.0f} s {self.post}", flush=True)

    def set_postfix(self, **kw):
        self.post = " ".join(f"{k}={v}" for k, v in kw.items())


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    from ibert_tvm.errors import IBertTVMError

    try:
        return run(a)
    except IBertTVMError as e:
        return _fail(str(e))


def run(a) -> int:
    import numpy as np

    from ibert_tvm.cli.common import check_output_of
    from ibert_tvm.datasets import default_calibration_sentences, read_sentences
    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.artifact import ARTIFACT, QuantizedModel
    from ibert_tvm.quantization.calibrate import calibrate
    from ibert_tvm.quantization.config import QUANTIZATION
    from ibert_tvm.quantization.qat import QATModel, copy_checkpoint, distill_embeddings, fp32_embeddings

    if not (a.lr > 0 and np.isfinite(a.lr)):
        raise IBertTVMError(f"--lr must be a positive number, got {a.lr}")
    if a.init and a.softmax_bits is not None:
        raise IBertTVMError("--softmax-bits applies to the default calibration; --init brings its own scheme")
    check_output_of(a.output, a.model, ARTIFACT)
    sentences: list[str] = []
    for f in a.text:
        sentences += read_sentences(f, "--text file")
    sentences = list(dict.fromkeys(sentences))
    probe_note = "not checked (--no-probe-check)"
    if not a.no_probe_check:
        from ibert_tvm.probe import probe_slices, slices_digest

        slices = probe_slices(quiet=True)
        probe = {s.strip() for ss in slices.values() for s in ss}
        hits = [s for s in sentences if s in probe]
        if hits:
            raise IBertTVMError(f"--text: {len(hits)} training sentence(s) occur in the fidelity probe set "
                                f"(first: {hits[0][:60]!r}); remove them to keep the probe held out")
        probe_note = f"0 of {len(sentences)} in the probe set ({len(probe)} sentences, digest {slices_digest(slices)[:12]})"
    print(f"training text: {len(sentences)} unique sentences; exact-match overlap with the probe set: {probe_note}")

    t0 = time.time()
    ckpt = load_checkpoint(a.model)
    if ckpt.head != "embedding":
        raise IBertTVMError(f"{ckpt.path} is not an embedding model (head {ckpt.head}): distillation trains a "
                            "pooled embedding")
    if a.init:
        qm = QuantizedModel.load(a.init)
    else:
        config = QUANTIZATION["ibert-w8a8"]
        if a.softmax_bits is not None:
            config = config.with_softmax(a.softmax_bits, None)
        qm = calibrate(ckpt, default_calibration_sentences(300), config, progress=_Log("calibrate", 5))
    qat = QATModel(copy_checkpoint(ckpt), qm)  # trains a copy: ckpt stays the frozen FP32 teacher
    if a.freeze_ranges:
        qat.freeze()
    teacher = fp32_embeddings(ckpt, qat.tokenizer, sentences, progress=_Log("teacher", 10))
    stats = distill_embeddings(qat, sentences, teacher, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                               seed=a.seed, max_steps=a.steps, progress=_Log("qat"))
    info = {"objective": "1 - cos(integer pooled, FP32 pooled)", "sentences": len(sentences),
            "text": [str(f) for f in a.text], "steps": stats.steps, "batch_size": a.batch_size, "lr": a.lr,
            "seed": a.seed, "ranges": "frozen (the start's)" if a.freeze_ranges else "EMA of per-batch max (0.95)",
            "init": a.init or f"calibrate default 300 STS-B train, {qm.config.name}",
            "probe_overlap": probe_note,
            "loss_first10": round(float(np.mean(stats.losses[:10])), 6) if stats.losses else None,
            "loss_last10": round(float(np.mean(stats.losses[-10:])), 6) if stats.losses else None,
            "train_seconds": round(time.time() - t0, 1)}
    out = qat.export(tag="distill", info=info)
    out.save(a.output)
    print(json.dumps(info, indent=1))
    print(f"wrote {a.output}: id {out.identity} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
