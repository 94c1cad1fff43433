"""ibert-tvm: integer-only BERT-family inference compiled with Apache TVM.

Every tensor between ops is an integer plus a static scale known at compile time;
non-linear ops are integer polynomials (I-BERT); the compiled module is verified to
contain no floating point at all (:mod:`ibert_tvm.passes.verify`).
"""

__version__ = "0.1.0"
