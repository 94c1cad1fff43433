"""``ibert-tvm verify OUT/`` cannot be fooled (issue 11 section 2) and reports bad artifacts as
one ``error:`` line (section 5).

Each bypass plants a library built with gcc into a copy of a real compiled ``out/`` and rewrites
the manifest's ``lib_sha256`` to match, so the hash check passes and the binary scan is what
must catch it. The real tiny model (x86-64 and, with the cross tools, aarch64) still verifies.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import aarch64_support as arm
from ibert_tvm.cli import main
from ibert_tvm.support.hashing import sha256_file


def verify(capsys, out: Path) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["verify", str(out)])
    stdout, err = capsys.readouterr()
    return rc, stdout, err


def planted(compiled_factory, tmp_path: Path, c_source: str | None = None, *, libs=(), rehash=True) -> Path:
    """A copy of the real out/ whose model.so is ``c_source`` compiled with gcc (None: unchanged)."""
    out = tmp_path / "out"
    shutil.copytree(compiled_factory("BertModel"), out)
    if c_source is not None:
        src = tmp_path / "planted.c"
        src.write_text(c_source)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(out / "model.so"), str(src), *libs], check=True)
    if rehash:
        rehash_library(out)
    return out


def rehash_library(out: Path) -> None:
    """Record the current model.so's sha256 in the manifest (``lib_sha256`` and ``files``)."""
    digest = sha256_file(out / "model.so")
    files = json.loads((out / "manifest.json").read_text())["files"]
    edit_manifest(out, lib_sha256=digest, files={**files, "model.so": digest})


def edit_manifest(out: Path, **fields) -> None:
    m = json.loads((out / "manifest.json").read_text())
    m.update(fields)
    (out / "manifest.json").write_text(json.dumps({k: v for k, v in m.items() if v is not None}))


def assert_caught(rc: int, stdout: str, *needles: str) -> None:
    assert rc == 1, stdout
    assert not re.search(r"^float ops: 0$", stdout, re.M), stdout
    for n in needles:
        assert n in stdout, f"{n!r} not in\n{stdout}"


def assert_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "ibert-tvm verify: error: " in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


# -- the real artifacts still verify ----------------------------------------------------------
def test_real_model_verifies_with_no_findings(compiled_factory, capsys):
    rc, stdout, err = verify(capsys, compiled_factory("BertModel"))
    assert rc == 0, stdout + err
    assert stdout.rstrip().endswith("float ops: 0") and "findings:" not in stdout
    assert "TVMFFIErrorSetRaisedFromCStrParts" in stdout  # the import list is shown
    assert "indirect.slotval" in stdout  # the workspace calls through the runtime's slots were seen


def test_real_aarch64_model_verifies_with_no_findings(quantized_factory, tmp_path_factory, capsys):
    arm.need_tools("aarch64-linux-gnu-objdump")
    rc, stdout, err = verify(capsys, arm.arm_out(quantized_factory, tmp_path_factory))
    assert rc == 0, stdout + err
    assert "(aarch64;" in stdout and stdout.rstrip().endswith("float ops: 0") and "findings:" not in stdout


# -- bypass 1: a replaced model.so ------------------------------------------------------------
def test_replaced_library_calling_libm_exp_is_caught(compiled_factory, tmp_path, capsys):
    out = planted(compiled_factory, tmp_path, "#include <math.h>\ndouble f(double x) { return exp(x); }\n",
                  libs=("-lm",))
    rc, stdout, _ = verify(capsys, out)
    assert_caught(rc, stdout, "imports exp", "links libm.so.6")


def test_replaced_library_with_the_old_hash_is_refused(compiled_factory, tmp_path, capsys):
    out = planted(compiled_factory, tmp_path, "int f(int x) { return x + 1; }\n", rehash=False)
    rc, stdout, err = verify(capsys, out)
    assert_error(rc, err, "model.so", "lib_sha256")
    assert "recorded at compile time" not in stdout  # nothing about a file that is not the recorded one


def test_manifest_without_lib_sha256_is_refused(compiled_factory, tmp_path, capsys):
    out = planted(compiled_factory, tmp_path, rehash=False)
    edit_manifest(out, lib_sha256=None)
    rc, stdout, err = verify(capsys, out)
    assert_error(rc, err, "manifest.json", "lib_sha256")
    assert "recorded at compile time" not in stdout


@pytest.mark.parametrize("damage", ["params-swapped", "tokenizer-edited", "no-file-hashes"])
def test_verify_checks_every_file_of_the_artifact(damage, compiled_factory, tmp_path, capsys):
    """The proof is about what runs: swapped parameters or an edited tokenizer change the answers
    of an untouched model.so, so verify refuses them too (it passed them before)."""
    out = planted(compiled_factory, tmp_path, rehash=False)
    if damage == "params-swapped":
        import numpy as np

        with np.load(out / "params.npz") as z:
            arrays = dict(z)
        names = sorted(arrays)
        a, b = next((x, y) for x in names for y in names
                    if x < y and arrays[x].shape == arrays[y].shape and not np.array_equal(arrays[x], arrays[y]))
        arrays[a], arrays[b] = arrays[b], arrays[a]
        np.savez(out / "params.npz", **arrays)
        needle = "params.npz"
    elif damage == "tokenizer-edited":
        (out / "tokenizer.json").write_text((out / "tokenizer.json").read_text().replace('"lowercase":true', '"lowercase":false'))
        needle = "tokenizer.json"
    else:
        edit_manifest(out, files=None)
        needle = "'files'"
    rc, stdout, err = verify(capsys, out)
    assert_error(rc, err, needle)
    assert "recorded at compile time" not in stdout


# -- bypass 2: float code under an allow-listed fp16 helper name -------------------------------
HELPER = "float __extendhfsf2(float x) { return x * 3.5f + 1.0f; }\n"
CALLERS = {
    "no-caller": "",
    "kernel": "int __tvm_ffi_kernel(int x) { return (int)__extendhfsf2((float)x); }\n",
    "other-helper": "unsigned short __truncsfhf2(float x) { return (unsigned short)__extendhfsf2(x); }\n",
}


@pytest.mark.parametrize("caller", list(CALLERS))
def test_float_code_named_like_an_fp16_helper_is_caught(caller, compiled_factory, tmp_path, capsys):
    out = planted(compiled_factory, tmp_path, "__attribute__((noinline)) " + HELPER + CALLERS[caller])
    rc, stdout, _ = verify(capsys, out)
    assert_caught(rc, stdout, "binary:__extendhfsf2: mulss")


# -- bypass 2b: float on the AMX tile unit (Sapphire Rapids) -------------------------------------
AMX_FLOAT = {
    "tdpbf16ps": "tdpbf16ps %%tmm2, %%tmm1, %%tmm0",  # bf16 dot products into fp32 tiles
    "tdpfp16ps": "tdpfp16ps %%tmm2, %%tmm1, %%tmm0",  # fp16 ditto (AMX-FP16)
}


@pytest.mark.parametrize("mnemonic", list(AMX_FLOAT))
def test_amx_float_tile_op_is_caught(mnemonic, compiled_factory, tmp_path, capsys):
    """The AMX float tile dot products are float ops (an x86 SSE/AVX-only list missed them); the
    integer tile ops beside them (``tdpbusd``, the tile loads) are not findings."""
    src = (f'void __tvm_ffi_kernel(void) {{ __asm__ volatile("{AMX_FLOAT[mnemonic]}" ::: "memory"); }}\n'
           'void int_tiles(void) { __asm__ volatile("tdpbusd %%tmm2, %%tmm1, %%tmm0" ::: "memory"); }\n')
    out = planted(compiled_factory, tmp_path, src)
    rc, stdout, _ = verify(capsys, out)
    assert_caught(rc, stdout, f"binary:__tvm_ffi_kernel: {mnemonic}")
    assert "tdpbusd" not in stdout, stdout


# -- bypass 3: an indirect call -----------------------------------------------------------------
@pytest.mark.parametrize("signature", ["int (*fn)(int), int x", "double (*fn)(double), double x"])
def test_call_through_a_function_pointer_is_caught(signature, compiled_factory, tmp_path, capsys):
    out = planted(compiled_factory, tmp_path, f"__attribute__((noinline)) {signature.split()[0]} apply({signature}) "
                  "{ return fn(x); }\n")
    rc, stdout, _ = verify(capsys, out)
    assert_caught(rc, stdout, "binary:apply@", "indirect call/jump to an unknown target")


# The dataflow behind bypass 3 across alignment padding: LLVM may put no-ops after a jump, before
# a loop head, that nothing branches or falls into. ``padded`` is that layout (a runtime slot
# loaded into r12, a jump over two no-ops, the call through r12 at the loop head): its call is
# known. ``hidden`` puts a real instruction there instead (r12 overwritten): an instruction no
# branch reaches may be a hidden entry, so nothing is known after it and the call is a finding.
PADDING = r"""
void *(*__TVMBackendAllocWorkspace)(int, int, unsigned long, int, int);
#define SLOT_CALL(name, gap) \
  __attribute__((naked)) void name(void) { __asm__ volatile( \
    "push %r12\n\t" \
    "movq __TVMBackendAllocWorkspace@GOTPCREL(%rip), %r12\n\t" \
    "jmp 2f\n\t" gap \
    "2: call *(%r12)\n\t" \
    "pop %r12\n\t" \
    "ret\n\t"); }
SLOT_CALL(padded, "nop\n\t" "xchg %ax, %ax\n\t")
SLOT_CALL(hidden, "movq %rdi, %r12\n\t")
"""


def test_alignment_padding_keeps_what_the_loop_head_knows(compiled_factory, tmp_path, capsys):
    out = planted(compiled_factory, tmp_path, PADDING)
    rc, stdout, _ = verify(capsys, out)
    assert_caught(rc, stdout, "binary:hidden@", "indirect call/jump to an unknown target")
    assert "binary:padded@" not in stdout, stdout


# -- section 5: bad artifacts are one error line ------------------------------------------------
def test_manifest_verify_not_an_object_is_an_error(compiled_factory, tmp_path, capsys):
    out = planted(compiled_factory, tmp_path, rehash=False)
    edit_manifest(out, verify=["not", "an", "object"])
    rc, _, err = verify(capsys, out)
    assert_error(rc, err, "manifest.json", "'verify'")


@pytest.mark.parametrize("content", [bytes(range(256)) * 8, b"just a text file\n"], ids=["random-bytes", "text"])
def test_model_so_that_is_not_elf_is_an_error(content, compiled_factory, tmp_path, capsys):
    out = planted(compiled_factory, tmp_path, rehash=False)
    (out / "model.so").write_bytes(content)
    rehash_library(out)
    rc, _, err = verify(capsys, out)
    assert_error(rc, err, "model.so", "not an ELF")
