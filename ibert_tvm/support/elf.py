"""Which CPU an ELF file is built for, from its header alone (no loading, no tools).

Used by the board runner (refuse a ``model.so`` built for another CPU before the runtime tries
to load it), by the RPC client and by the machine-code verifier (which disassembler to run).
"""

from __future__ import annotations

from pathlib import Path

# ELF e_machine values (https://refspecs.linuxfoundation.org/elf/gabi4+/ch4.eheader.html)
_ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}


def elf_machine(path: Path) -> str | None:
    """The CPU architecture an ELF shared library is built for (``None``: not ELF)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    code = int.from_bytes(head[18:20], order)
    return _ELF_MACHINES.get(code, f"e_machine {code}")
