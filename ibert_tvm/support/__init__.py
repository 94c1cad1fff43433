"""The bottom layer: helpers every other package may use.

Modules here import nothing from ``ibert_tvm`` except :mod:`ibert_tvm.errors`, and nothing heavy
(no numpy, torch or tvm): the board runtime imports them too.
"""
