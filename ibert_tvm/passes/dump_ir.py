"""DumpIR: write ``mod.script()`` to ``<dump_dir>/<name>.py`` and return the module unchanged.

A debug pass for any point of a ``tvm.transform.Sequential`` (the lowering sequence of
:func:`ibert_tvm.frontend.lower.lower_to_integer` puts one after each of its passes when given a
``dump_dir``). Preconditions: none. Invariant: the module is returned as it came.
"""

from __future__ import annotations

import os
from pathlib import Path

import tvm


@tvm.transform.module_pass(opt_level=0, name="DumpIR")
class DumpIR:  # pylint: disable=too-few-public-methods
    """Write the module's TVMScript to ``dump_dir/name.py``."""

    def __init__(self, dump_dir: str | os.PathLike, name: str):
        self.path = Path(dump_dir) / f"{name}.py"

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(mod.script())
        return mod
