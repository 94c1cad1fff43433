"""ibert-tvm: integer-only BERT-family inference compiled with Apache TVM.

Every tensor between ops is an integer plus a static scale known at compile time;
non-linear ops are integer polynomials (I-BERT); the compiled module is verified to
contain no floating point at all (:mod:`ibert_tvm.passes.verify`).
"""

__version__ = "0.1.0"

__all__ = ["load", "__version__"]


def __getattr__(name: str):
    """``ibert_tvm.load`` is imported on first use: ``import ibert_tvm`` itself imports nothing heavy."""
    if name == "load":
        from .deploy.api import load

        return load
    raise AttributeError(f"module 'ibert_tvm' has no attribute {name!r}")
