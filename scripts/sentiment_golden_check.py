"""compiled == golden for the integer sentiment model that `ibert-tvm eval --task sentiment` scored.

    python scripts/sentiment_golden_check.py                 # the default scheme
    python scripts/sentiment_golden_check.py --gelu poly4    # = eval --task sentiment --model default --gelu poly4

Calibrates the cached fine-tuned classifier exactly as `eval` does (scheme, calibration, GELU; 300
sentiment train sentences), refuses to go on unless the compiled model `eval` left in the cache is
that quantized model (the cache directory is named by its hash; nothing is compiled here), then runs
the compiled model and the golden executor on the first 16 test sentences and requires the int32
logits to be equal bit for bit (bench/accuracy.py's check for its PTQ columns). Exit 1 otherwise.
With --agreement it then runs that compiled model and the FP32 classifier over the whole test split and
prints how many predictions differ from FP32's (an equal accuracy can hide swapped errors).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from ibert_tvm.quantization.config import GELU_FORMS, QUANTIZATION

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scheme", default="ibert-w8a8", choices=list(QUANTIZATION))
    p.add_argument("--calibration", choices=["minmax", "percentile"])
    p.add_argument("--gelu", choices=GELU_FORMS)
    p.add_argument("-n", type=int, default=16, help="test sentences to compare (default 16)")
    p.add_argument("--agreement", action="store_true", help="also: predictions vs FP32's on the whole test split")
    args = p.parse_args(argv)

    import numpy as np

    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.evaluate import calibration_sentences, check_pair, compiled_cache_dir, resolve_model
    from ibert_tvm.model.hf_loader import load_tokenizer_json
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.quantization.calibrate import calibrate
    from ibert_tvm.quantization.qat import integer_forward
    from ibert_tvm.tasks import sentiment_task

    config = QUANTIZATION[args.scheme].with_calibration(args.calibration).with_gelu(args.gelu)
    ckpt = resolve_model("sentiment", "default")
    qm = calibrate(ckpt, calibration_sentences("sentiment"), config)
    out = compiled_cache_dir(qm)
    if not (out / "manifest.json").is_file():
        print(f"{out} is not in the cache: run `ibert-tvm eval --task sentiment --model default` with the same "
              "options first", file=sys.stderr)
        return 1
    cm = CompiledModel(out)
    check_pair(ckpt, cm, load_tokenizer_json(ckpt.path))
    texts = [e.text for e in sentiment_task("test").examples[: args.n]]
    enc = cm.tokenizer(texts)
    got, want = cm.run_ids(enc), integer_forward(ModelPlan(qm), enc)[0]
    same = np.array_equal(got, want)
    print(f"{config.name} ({config.calibration}, gelu {config.gelu}): {out.name}, identity "
          f"{cm.manifest['model']['identity']}: compiled {'==' if same else '!='} golden on {len(texts)} test "
          f"sentences{', bit for bit' if same else ''} (int32 logits {got.shape})")
    if same and args.agreement:
        _agreement(ckpt, cm)
    return 0 if same else 1


def _agreement(ckpt, cm) -> None:
    import numpy as np

    from ibert_tvm.evaluate import compiled_encoder, torch_encoder
    from ibert_tvm.tasks import sentiment_task

    task = sentiment_task("test")
    texts, gold = [e.text for e in task.examples], task.labels.astype(np.int64)
    preds = {}
    for name, run in (("fp32", torch_encoder(ckpt.model, ckpt.head, ckpt.pooling)), ("integer", compiled_encoder(cm))):
        preds[name] = np.concatenate([np.argmax(run(cm.tokenizer(texts[i : i + 32])), axis=1)
                                      for i in range(0, len(texts), 32)])
    f, q = preds["fp32"], preds["integer"]
    differ = np.flatnonzero(f != q)
    print(f"{len(texts)} test examples: fp32 {100 * np.mean(f == gold):.2f}%, integer {100 * np.mean(q == gold):.2f}%; "
          f"{len(differ)} predictions differ from FP32's ({int(np.sum((q == gold)[differ]))} of them now right, "
          f"{int(np.sum((f == gold)[differ]))} now wrong): test #{', #'.join(map(str, differ))}")


if __name__ == "__main__":
    sys.exit(main())
