"""FP32 vs integer-only on a token classifier: per-token argmax agreement and entity span F1.

:func:`compare_token_logits` takes per-sentence FP32 logits and the compiled model's int32 logits
(``[tokens, labels]`` each, same tokens), the tokens' word ids and the gold word tags, and returns
a JSON-able report: agreement per sub-token and per word (the word's label is its first
sub-token's), per gold entity-type slice, the tails (sentences with any disagreeing token, the
worst sentence), and entity F1 of FP32 and of the integer model against gold, and of the integer
model against FP32's own spans. The integer decision is ``argmax`` of the int32 logits (the first
on a tie), exactly what ``Model.predict`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .data import TaggedSentence, first_subtoken_index, span_f1


def _score(s) -> dict:
    return {"precision": s.precision, "recall": s.recall, "f1": s.f1, "tp": s.tp, "pred": s.n_pred, "gold": s.n_gold}


def compare_token_logits(sentences: Sequence[TaggedSentence], word_ids: Sequence[Sequence[int | None]],
                         fp32: Sequence[np.ndarray], q: Sequence[np.ndarray], labels: Sequence[str]) -> dict:
    n_tok = agree_tok = 0
    n_word = agree_word = 0
    slice_n: dict[str, int] = {}
    slice_agree: dict[str, int] = {}
    any_tok = any_word = 0
    worst = None  # (disagreeing tokens, index)
    margins = []  # FP32 top-1 minus top-2 logit at the disagreeing tokens
    all_margins = []
    gold, pred_fp, pred_q = [], [], []
    for i, (s, wid, f, qi) in enumerate(zip(sentences, word_ids, fp32, q)):
        real = np.array([w is not None for w in wid])
        af, aq = f.argmax(-1), qi.argmax(-1)
        same = af == aq
        n_tok += int(real.sum())
        dis = int((~same & real).sum())
        agree_tok += int(real.sum()) - dis
        top2 = np.sort(f[real], axis=-1)[:, -2:]
        m = top2[:, 1] - top2[:, 0]
        all_margins += m.tolist()
        margins += m[~same[real]].tolist()
        if dis:
            any_tok += 1
            if worst is None or dis > worst[0]:
                worst = (dis, i, int(real.sum()))
        first = first_subtoken_index(wid, len(s.words))
        wf = [labels[int(af[k])] for k in first]
        wq = [labels[int(aq[k])] for k in first]
        gold.append(list(s.tags))
        pred_fp.append(wf)
        pred_q.append(wq)
        word_dis = 0
        for g, a, b in zip(s.tags, wf, wq):
            t = "O" if g == "O" else g[2:]
            slice_n[t] = slice_n.get(t, 0) + 1
            slice_agree[t] = slice_agree.get(t, 0) + (a == b)
            word_dis += a != b
        n_word += len(s.words)
        agree_word += len(s.words) - word_dis
        any_word += word_dis > 0
    types = sorted({lab[2:] for lab in labels if lab != "O"})
    per_type = {}
    for t in types:
        per_type[t] = {"words": slice_n.get(t, 0),
                       "agreement": slice_agree.get(t, 0) / slice_n[t] if slice_n.get(t) else None,
                       "f1_fp32": span_f1(gold, pred_fp, t).f1, "f1_integer": span_f1(gold, pred_q, t).f1,
                       "gold_spans": span_f1(gold, pred_fp, t).n_gold}
    n = len(sentences)
    return {
        "sentences": n, "tokens": n_tok, "words": n_word,
        "token_agreement": agree_tok / n_tok, "word_agreement": agree_word / n_word,
        "disagreeing_tokens": n_tok - agree_tok, "disagreeing_words": n_word - agree_word,
        "o_words": slice_n.get("O", 0),
        "o_agreement": slice_agree.get("O", 0) / slice_n["O"] if slice_n.get("O") else None,
        "entity_words": n_word - slice_n.get("O", 0),
        "entity_word_agreement": ((sum(v for k, v in slice_agree.items() if k != "O")
                                   / (n_word - slice_n.get("O", 0))) if n_word > slice_n.get("O", 0) else None),
        "per_type": per_type,
        "sentences_any_token_disagrees": any_tok / n, "sentences_any_word_disagrees": any_word / n,
        "worst_sentence": ({"index": worst[1], "disagreeing_tokens": worst[0], "tokens": worst[2]}
                           if worst else None),
        "fp32_margin_at_disagreements": ({"max": float(np.max(margins)), "median": float(np.median(margins))}
                                         if margins else None),
        "fp32_margin_median_all": float(np.median(all_margins)),
        "f1_fp32": _score(span_f1(gold, pred_fp)), "f1_integer": _score(span_f1(gold, pred_q)),
        "f1_integer_vs_fp32": _score(span_f1(pred_fp, pred_q)),
    }
