"""The aarch64 link: no Cortex-A53 erratum 843419 stubs in what the target's linker writes.

Debian's cross g++ passes ``--fix-cortex-a53-843419`` to ld by default. For an ``adrp`` at page
offset 0xff8/0xffc followed by loads, ld then moves a load into a stub and branches to it, and
puts a (dead) branch over the stub section that can land on the next function, e.g. the weak
``__truncsfhf2`` TVM links into every module. The machine-code verifier refuses that branch and
the split ``adrp``/load pair; a code-layout change in an unrelated kernel was enough to make it
refuse a correct model. ``targets.TARGETS["aarch64"].link_options`` turns the patch off (no
dotprod-capable core has the erratum); this test links the erratum's instruction pattern with
the target's own link step and checks for stubs, so it fails if the option is dropped.
"""

from __future__ import annotations

import re
import subprocess

import aarch64_support as arm

# f: an adrp at page offset 0xff8, a load, then a load based on the adrp's register (the
# erratum's sequence); the target is > 1 MB away, so ld cannot rewrite the adrp as an adr
ERRATUM_SEQUENCE = """
    .text
    .globl f
    .type f, %function
    .p2align 12
f:
    .skip 0xff8
    adrp x8, data
    ldr x1, [sp]
    ldr x0, [x8, #:lo12:data]
    ret
    .size f, .-f
    .bss
    .p2align 3
    .skip 0x200000
data: .skip 8
"""


def _link(tmp_path, options) -> str:
    from tvm.support import cc

    from ibert_tvm.targets import get_target

    src = tmp_path / "seq.s"
    src.write_text(ERRATUM_SEQUENCE)
    so = tmp_path / f"seq{len(options)}.so"
    cc.cross_compiler(get_target("aarch64").cross_compiler, options=list(options))(str(so), [str(src)])
    return subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(so)], capture_output=True, text=True,
                          check=True).stdout


def test_the_aarch64_link_writes_no_erratum_stub(tmp_path):
    arm.need_tools("aarch64-linux-gnu-g++", "aarch64-linux-gnu-objdump")
    from ibert_tvm.targets import get_target

    # the control: Debian's default link does patch this sequence (else the test proves nothing)
    assert re.search(r"<e843419@", _link(tmp_path, ())), "the linker no longer patches the erratum sequence"
    dis = _link(tmp_path, get_target("aarch64").link_options)
    assert "e843419@" not in dis
    body = re.search(r"<f>:\n(.*?)\n\n", dis, re.S).group(1)
    insns = [ln.split("\t")[2] for ln in body.splitlines() if ln.count("\t") >= 2]
    assert insns[-4:] == ["adrp", "ldr", "ldr", "ret"], insns[-4:]  # the loads stay where they were
