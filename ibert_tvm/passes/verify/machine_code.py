"""The machine-code level: a shipped ``model.so`` itself, read as ELF and with ``objdump -d``.

The build already refused any float in the lowered Relax/TIR and in the generated LLVM IR
(``passes/pipeline.py``); the manifest records those reports. ``verify`` re-checks the shipped
binary on its own, in this order. Step 1 reads the manifest of ``out/``, so it is the caller's
(:func:`ibert_tvm.deploy.verify_artifact.check_identity`); :func:`scan_binary` does steps 2-5.

1. **Identity.** ``model.so`` must hash to the manifest's ``lib_sha256`` (a manifest without it
   is refused): only then are the recorded compile-time results printed, since only then do they
   describe this file.
2. **What the dynamic linker does** (read from the ELF program headers and ``PT_DYNAMIC``, the
   data the loader itself uses, not from section headers). ``DT_NEEDED`` may only name libc;
   no ``DT_RPATH``/``DT_RUNPATH`` (a library search path could substitute another libc); no
   writable+executable segment and no relocation inside an executable segment (so the bytes we
   disassemble are the bytes that run); only the relocation types TVM's links use (RELATIVE,
   GLOB_DAT, JUMP_SLOT, ABS64). Every symbol a relocation binds must be on :data:`IMPORTS`
   or be defined in the file and not preemptible (hidden/protected/local); the TVM runtime's
   function-pointer slots (:data:`RUNTIME_SLOTS`) are the one preemptible exception.
3. **Every instruction** of every executable section (``objdump -d``) is scanned, no function
   exempt by name: x86 SSE/AVX scalar/packed float arithmetic, conversions, FMA, x87, the AMX
   float tile ops (``tdpbf16ps``, ``tdpfp16ps``, ...; the integer ``tdpbusd`` family is not float); AArch64
   ``f*`` (except ``fmov``), ``scvtf``/``ucvtf``, bf16. Register moves and bitwise ops on
   vector registers are integer-neutral and not counted. System calls and undecodable bytes
   are findings (they leave the scan).
4. **Where control can go.** Every direct branch and every entry point (exported functions,
   ``DT_INIT``/``DT_FINI``, relocated code pointers, code addresses computed pc-relatively such
   as the parallel closures handed to the runtime) must land on an instruction of the
   linear-sweep disassembly, so no hidden overlapping decode is reachable by them. An indirect
   call/jump is allowed only when a must-dataflow analysis over the function's control-flow
   graph proves its target is one of: (a) the content of a GOT/PLT slot that relocates to an
   allowlisted import or to an instruction of this file; (b) the content of a runtime slot in
   :data:`RUNTIME_SLOTS`, loaded through its GOT entry (how TVM's host code calls
   ``TVMBackendAllocWorkspace`` and friends: ``mov r, [rip+GOT]; call [r]`` on x86,
   ``adrp; ldr; ldr; blr`` on AArch64); (c) the dynamic linker's lazy-binding resolver
   (``DT_PLTGOT + 16``, the x86-64 and AArch64 PLT0 stub). Every other indirect call or jump,
   including switch jump tables (TVM 0.27 emitted none for our models), is a finding.
   *Returns* are not modelled: a ``ret`` is trusted to go back after its call. Code that
   builds a return address by arithmetic and returns to it could enter an instruction with a
   register state the dataflow did not see (a known gap; returning to a code address loaded
   as-is, ``lea [rip+d]``, is covered: such addresses are entry points, with nothing known).
   Likewise a call is trusted to keep the callee-saved registers, as the psABI says, also when
   the callee is code of this file. Both are assumptions a binary written against this analysis
   could break; what a compiler emits keeps them.
5. **fp16 helpers.** TVM links the weak ``__truncsfhf2``/``__extendhfsf2`` into every module.
   They get no exemption by name: TVM 0.27's LLVM emits them as integer bit manipulation
   (``movd``/``pextrw``/``fmov`` moves only), so they pass step 3 on their own, and whatever
   else is put under those names is scanned like any other code. What we add is
   *unreachability*: any branch, computed address or relocation pointing into a helper is a
   finding, because calling one means fp16 data is flowing. This is sounder than comparing
   their code with TVM's, which would still let a kernel convert floats through the genuine
   helper, and needs no per-CPU table of expected bytes.

What is proven: the instructions of ``model.so`` contain no float instruction, and control
leaves the file only through the edges of step 4. What is trusted, not checked: the TVM runtime
(``libtvm_runtime``/``libtvm_ffi``, which loads the file, fills the runtime slots and runs the
Relax VM's builtins), libc's ``memcpy``-class functions and the dynamic linker. The argument
assumes the code keeps to the ABI (callee-saved registers survive calls) and does not forge
code pointers through memory (overwriting a return address or a slot with a computed address):
it rules out float in what compilers emit and in libraries swapped in, patched or hand-linked,
not a binary written adversarially against this analysis. On aarch64, GNU ld maps ``.rodata``
into the executable segment; those bytes are not disassembled. Direct branches and relocated
pointers into them are findings, but a computed ``.rodata`` address handed to the runtime as a
closure would not be (the step-4 entry rule only applies to addresses inside code sections).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ...errors import IBertTVMError
from ...support.elf import elf_machine
from .floats import FP16_HELPERS
from .report import Finding, Report

# Undefined symbols a relocation may bind. Seen in the tiny model built for the `llvm`, `x86`
# and `aarch64` targets (readelf --dyn-syms, TVM 0.27, gcc 12 / aarch64-linux-gnu-g++ 12):
IMPORTS = frozenset({
    "TVMFFIErrorSetRaisedFromCStrParts",  # TVM's error path: records a message string
    "memcpy", "memmove", "memset",  # libc byte copies/fills LLVM lowers copies and zeroing to (memset seen on x86)
    # gcc's crtbeginS.o/crti.o hooks, weak and normally unbound (glibc's __cxa_finalize runs atexit handlers)
    "__cxa_finalize", "__gmon_start__", "_ITM_registerTMCloneTable", "_ITM_deregisterTMCloneTable",
})
# Function-pointer slots TVM's codegen defines in the module and the runtime fills at load time
# (tvm/src/runtime/library_module.cc; the names are strings in libtvm_runtime.so). Workspace
# allocation and the thread pool (which calls back into this file's own, scanned closures) are
# allowed; `__TVMFFIFunctionCall` and `__TVMFFIEnvModLookupFromImports` are not: through them
# the code could call any registered packed function, float or not.
RUNTIME_SLOTS = frozenset({
    "__TVMBackendAllocWorkspace", "__TVMBackendFreeWorkspace",  # seen on every target
    "__TVMBackendParallelLaunch", "__TVMBackendParallelBarrier",  # ParallelLaunch seen on aarch64 (4 cores)
})
# What a CUDA build's host code adds: it launches the device kernels through handles it looks up
# by name in the module's imports (the embedded CUDA module) and calls through the runtime.
# Allowed on CUDA builds only (``scan_binary(..., device_launch=True)``); there the indirect
# calls are counted, not proven: the host-side proof is weaker (no float instruction, no
# foreign import or library), and the kernels themselves are checked as CUDA source and PTX.
DEVICE_LAUNCH_SLOTS = frozenset({
    "__TVMFFIFunctionCall", "__TVMFFIEnvModLookupFromImports", "__TVMFFIHandleInitOnce", "__tvm_ffi__library_ctx",
})
NEEDED = frozenset({"libc.so.6"})  # DT_NEEDED seen: none (`llvm`), libc.so.6 (`x86`, for memset)

# ELF constants (https://refspecs.linuxfoundation.org/elf/gabi4+/contents.html, psABIs)
_PT_LOAD, _PT_DYNAMIC, _PF_X, _PF_W = 1, 2, 1, 2
_SHF_EXECINSTR = 4
_DT = {"NEEDED": 1, "PLTRELSZ": 2, "PLTGOT": 3, "STRTAB": 5, "SYMTAB": 6, "RELA": 7, "RELASZ": 8, "INIT": 12,
       "FINI": 13, "RPATH": 15, "REL": 17, "TEXTREL": 22, "JMPREL": 23, "RUNPATH": 29, "RELR": 36}
_RELOCS = {  # e_machine -> {type: kind}
    "x86_64": {8: "RELATIVE", 6: "GLOB_DAT", 7: "JUMP_SLOT", 1: "ABS64"},
    "aarch64": {1027: "RELATIVE", 1025: "GLOB_DAT", 1026: "JUMP_SLOT", 257: "ABS64"},
}
_STB_LOCAL, _STV_DEFAULT = 0, 0

_X86_FLOAT = re.compile(
    r"^v?(?:"
    r"(?:add|sub|mul|div|sqrt|min|max|rcp\d*|rsqrt\d*|round|rndscale|hadd|hsub|dp|cmp\w*|ucomi|comi|scalef|getexp|getmant|reduce|range|fixupimm)(?:ss|sd|ps|pd|sh|ph|bf16)"
    r"|f(?:n)?m(?:add|sub)\w*|fmaddsub\w*|fmsubadd\w*"
    r"|cvt\w*"
    r")$"
)
# AMX (Sapphire Rapids and later): the tile loads/stores/config and the integer tile dot products
# (tdpbusd, tdpbssd, ...) are integer; the float tile ops end in ps/ph (tdpbf16ps, tdpfp16ps,
# tcmmimfp16ps, tmmultf32ps, tdpbf8ps, ...) or convert rows (tcvtrow*), whatever their prefix (tt*).
_AMX_FLOAT = re.compile(r"^t\w*(?:ps|ph)$|^tcvt\w*$")
_X87 = re.compile(r"^f(?:ld|st|add|sub|mul|div|sqrt|ild|ist|comi|ucomi|xch|chs|abs|prem|scale|rndint|sin|cos|yl2x|2xm1)\w*$")
_A64_FLOAT = re.compile(r"^(?:f(?!mov)\w+|scvtf|ucvtf|bfcvt\w*|bfmla\w*|bfdot)$")
_ESCAPES = {"x86_64": {"syscall", "sysenter", "int", "(bad)"}, "aarch64": {"svc", "hvc", "smc", ".inst"}}


@dataclass(frozen=True)
class _Arch:
    objdump: str
    package: str
    is_float: object
    call_clobbered: frozenset
    calls: frozenset  # direct/indirect call mnemonics
    ends_block: frozenset  # no fall-through after these


def _x86_canon() -> dict[str, str]:
    m = {}
    for r in ("ax", "bx", "cx", "dx"):
        m.update({f"r{r}": f"r{r}", f"e{r}": f"r{r}", r: f"r{r}", f"{r[0]}l": f"r{r}", f"{r[0]}h": f"r{r}"})
    for r in ("si", "di", "bp", "sp"):
        m.update({f"r{r}": f"r{r}", f"e{r}": f"r{r}", r: f"r{r}", f"{r}l": f"r{r}"})
    for i in range(8, 16):
        m.update({f"r{i}{s}": f"r{i}" for s in ("", "d", "w", "b")})
    return m


_X86_REG = _x86_canon()
_A64_REG = {f"{p}{i}": f"x{i}" for i in range(31) for p in "xw"}
_ARCH = {
    "x86_64": _Arch("objdump", "binutils", lambda m: bool(_X86_FLOAT.match(m) or _X87.match(m) or _AMX_FLOAT.match(m)),
                    frozenset({"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"}),  # SysV caller-saved
                    frozenset({"call"}), frozenset({"jmp", "ret", "ud2", "hlt"})),
    "aarch64": _Arch("aarch64-linux-gnu-objdump", "binutils-aarch64-linux-gnu", lambda m: bool(_A64_FLOAT.match(m)),
                     frozenset({f"x{i}" for i in range(19)} | {"x30"}),  # AAPCS64 caller-saved + lr
                     frozenset({"bl", "blr", "blraa", "blrab", "blraaz", "blrabz"}),
                     frozenset({"b", "br", "ret", "braa", "brab", "braaz", "brabz", "retaa", "retab", "udf"})),
}
# x86 instructions that write registers they do not name as operands (Intel SDM vol. 2), and which.
# Anything matching none of these writes at most the registers it names outside memory operands.
_X86_IMPLICIT = [
    (re.compile(r"^(?:i?mul|i?div|cqo|cdq|cwd|rdtsc|rdpmc|xgetbv|in|out)$"), {"rax", "rdx"}),
    (re.compile(r"^(?:cdqe|cwde|cbw|lahf|xlatb?|cmpxchg)$"), {"rax"}),
    (re.compile(r"^syscall$"), {"rax", "rcx", "r11"}),
    (re.compile(r"^(?:rdtscp|cpuid|cmpxchg\d+b)$"), {"rax", "rbx", "rcx", "rdx"}),
    (re.compile(r"^(?:movs|stos|lods|scas|cmps|ins|outs)[bwdq]?$"), {"rax", "rcx", "rsi", "rdi"}),
    (re.compile(r"^(?:leave|enter)$"), {"rbp"}),
    (re.compile(r"^loop\w*$"), {"rcx"}),
]
_X86_READONLY = {"cmp", "test", "push", "bt", "nop"}  # first operand read, not written
_X86_WRITES_ALL = {"xchg", "xadd", "cmpxchg", "mulx"}  # write more than their first operand
# aarch64: what writes no general register / more than its first operand (Arm ARM, A64 base ISA)
_A64_READONLY = re.compile(r"^(?:cmp|cmn|tst|ccmp|ccmn|cbn?z|tbn?z|prfm|nop|st(?:r[bh]?|ur[bh]?|p|np|\d|lr[bh]?|llr[bh]?)|b\.\w+)$")
_A64_STORE_EXCL = re.compile(r"^st(?:l?xr[bh]?|l?xp)$")  # store-exclusive: first operand is a status written
_A64_WRITES_TWO = re.compile(r"^(?:ld\w*p\w*|swp\w*|cas\w*|ld(?:add|clr|eor|set|smax|smin|umax|umin)\w*)$")
_BRANCH_TARGET = re.compile(r"(?:^|[\s,])([0-9a-f]+) <[^>]*>$")
_X86_RIP = re.compile(r"#\s*([0-9a-f]+)(?: <[^>]*>)?\s*$")
_PREFIXES = {"lock", "rep", "repz", "repe", "repnz", "repne", "bnd", "notrack", "data16", "cs", "ds", "addr32"}


# ---------------------------------------------------------------------------------------------
# ELF: what the loader reads
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sym:
    name: str
    value: int
    size: int
    defined: bool
    preemptible: bool


class _Elf:
    """ELF64 little-endian: segments, sections, dynamic entries, relocations, symbols."""

    def __init__(self, path: Path, machine: str):
        self.path, self.machine = path, machine
        self.data = data = path.read_bytes()
        try:
            if data[4] != 2 or data[5] != 1:
                raise ValueError("not ELF64 little-endian")
            (e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx) = struct.unpack_from(
                "<HHIQQQIHHHHHH", data, 16)
            if e_type != 3:
                raise ValueError("not a shared library (ET_DYN)")
            self.segments = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
            shdrs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
            names = shdrs[shstrndx] if shnum else None
            self.sections = [(self._cstr(names[4] + s[0]) if names else "", s) for s in shdrs]
            dyn = [s for s in self.segments if s[0] == _PT_DYNAMIC]
            if len(dyn) != 1:
                raise ValueError("no PT_DYNAMIC segment")
            self.dynamic: list[tuple[int, int]] = []
            for off in range(dyn[0][2], dyn[0][2] + dyn[0][5], 16):
                tag, val = struct.unpack_from("<qQ", data, off)
                if tag == 0:
                    break
                self.dynamic.append((tag, val))
        except (struct.error, IndexError, ValueError) as e:
            raise IBertTVMError(f"{path} is not a usable ELF shared library ({e}): not a TVM module") from None

    def _cstr(self, off: int) -> str:
        return self.data[off:self.data.index(b"\0", off)].decode("utf-8", "replace")

    def dyn(self, name: str) -> list[int]:
        return [v for t, v in self.dynamic if t == _DT[name]]

    def offset(self, vaddr: int) -> int:
        for typ, _, off, va, _, filesz, _, _ in self.segments:
            if typ == _PT_LOAD and va <= vaddr < va + filesz:
                return off + vaddr - va
        raise IBertTVMError(f"{self.path}: address {vaddr:#x} is in no loaded segment: not a TVM module")

    def executable(self, vaddr: int) -> bool:
        return any(s[0] == _PT_LOAD and s[1] & _PF_X and s[3] <= vaddr < s[3] + s[6] for s in self.segments)

    def code_section(self, vaddr: int) -> bool:
        return any(s[2] & _SHF_EXECINSTR and s[3] <= vaddr < s[3] + s[5] for _, s in self.sections)

    def symbol(self, index: int) -> _Sym:
        off = self.offset(self.dyn("SYMTAB")[0]) + 24 * index
        name, info, other, shndx, value, size = struct.unpack_from("<IBBHQQ", self.data, off)
        local = info >> 4 == _STB_LOCAL
        return _Sym(self._cstr(self.offset(self.dyn("STRTAB")[0]) + name), value, size, shndx != 0,
                    not local and (other & 3) == _STV_DEFAULT)

    def relocations(self) -> list[tuple[int, int, int, int]]:
        """(offset, type, symbol index, addend) of every RELA entry the loader applies."""
        out = []
        for start, size in ((self.dyn("RELA"), self.dyn("RELASZ")), (self.dyn("JMPREL"), self.dyn("PLTRELSZ"))):
            if start and size:
                base = self.offset(start[0])
                for k in range(size[0] // 24):
                    r_off, info, addend = struct.unpack_from("<QQq", self.data, base + 24 * k)
                    out.append((r_off, info & 0xFFFFFFFF, info >> 32, addend))
        return out

    def dynamic_symbols(self) -> list[_Sym]:
        sec = [s for n, s in self.sections if n == ".dynsym"]
        return [self.symbol(i) for i in range(1, sec[0][5] // 24)] if sec else []

    def needed(self) -> list[str]:
        strtab = self.offset(self.dyn("STRTAB")[0])
        return [self._cstr(strtab + v) for v in self.dyn("NEEDED")]


# ---------------------------------------------------------------------------------------------
# The scan
# ---------------------------------------------------------------------------------------------


def _objdump(so: Path, arch: _Arch) -> list[str]:
    if shutil.which(arch.objdump) is None:
        raise IBertTVMError(f"{arch.objdump} is needed to disassemble {so}: apt-get install {arch.package}")
    args = [arch.objdump, "-d", "--no-show-raw-insn", str(so)]
    if arch.objdump == "objdump":
        args[2:2] = ["-M", "intel"]
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode != 0:
        raise IBertTVMError(f"{arch.objdump} failed on {so}: {res.stderr.strip()[:300]}")
    return res.stdout.splitlines()


@dataclass
class _Insn:
    addr: int
    func: str
    mnem: str
    ops: str  # operands, comments removed
    text: str
    target: int | None  # direct branch target
    ref: int | None  # address named by a pc-relative operand (x86 `# addr`, aarch64 adr/adrp)


def _parse(lines: list[str], machine: str) -> list[_Insn]:
    head = re.compile(r"^([0-9a-f]+) <(.+)>:$")
    out, func = [], None
    for ln in lines:
        m = head.match(ln)
        if m:
            func = m.group(2)
            continue
        parts = ln.split("\t")
        if func is None or len(parts) < 2 or not parts[0].strip().endswith(":"):
            continue
        text = " ".join(p.strip() for p in parts[1:]).strip()
        if not text:
            continue
        addr = int(parts[0].strip()[:-1], 16)
        ref = None
        if machine == "x86_64":
            m = _X86_RIP.search(text)
            body = text[:m.start()].strip() if m else text
            ref = int(m.group(1), 16) if m else None
        else:
            body = text.split("//")[0].strip()
        toks = body.split(None, 1)
        while len(toks) > 1 and toks[0] in _PREFIXES:
            toks = toks[1].split(None, 1)
        mnem, ops = toks[0], (toks[1].strip() if len(toks) > 1 else "")
        bt = _BRANCH_TARGET.search(ops)
        target = None
        if bt:
            if machine == "aarch64" and mnem in ("adr", "adrp"):
                ref = int(bt.group(1), 16)
            else:
                target = int(bt.group(1), 16)
            ops = ops[:bt.start()].rstrip(", ")
        out.append(_Insn(addr, func, mnem, ops, text, target, ref))
    return out


def _outside_brackets(ops: str) -> str:
    return re.sub(r"\[[^\]]*\]", " ", ops)


def _regs(text: str, canon: dict[str, str]) -> set[str]:
    return {canon[t] for t in re.findall(r"\b[a-z][a-z0-9]*\b", text) if t in canon}


class _Flow:
    """Must-dataflow over one function: which registers hold a known code pointer or slot address.

    Values: ("page", P) aarch64 ``adrp`` result; ("addr", A) a computed address; ("slot", S) the
    address of runtime slot S; then what a slot/GOT word holds: ("slotval", S), ("ext", name) an
    allowlisted import, ("local", A) an address in this file, ("resolver",) ld.so's lazy binder.
    """

    def __init__(self, machine: str, words: dict[int, tuple]):
        self.machine, self.words = machine, words
        self.arch = _ARCH[machine]
        self.canon = _X86_REG if machine == "x86_64" else _A64_REG


    def mem_operand(self, state: dict, ins: _Insn) -> tuple | None:
        """What the single memory operand of ``ins`` reads, if known."""
        if self.machine == "x86_64":
            if "[rip+" in ins.ops:
                return self.words.get(ins.ref)
            m = re.search(r"\[(\w+)(?:\+0x0)?\]", ins.ops)
            v = state.get(self.canon.get(m.group(1))) if m else None
        else:
            m = re.search(r"\[(\w+)(?:, #(-?\w+))?\]$", ins.ops)
            if not m:
                return None
            v = state.get(self.canon.get(m.group(1)))
            off = int(m.group(2), 0) if m.group(2) else 0
            if v and v[0] in ("page", "addr"):
                return self.words.get(v[1] + off)
            if off:
                return None
        return ("slotval", v[1]) if v and v[0] == "slot" else None

    def step(self, state: dict, ins: _Insn) -> dict:
        """The state after ``ins``."""
        st = dict(state)
        if ins.mnem in self.arch.calls:
            for r in self.arch.call_clobbered:
                st.pop(r, None)
            return st
        if self.machine == "x86_64":
            dst = ins.ops.split(",")[0].strip()
            for pattern, regs in _X86_IMPLICIT:
                if pattern.match(ins.mnem):
                    for r in regs:
                        st.pop(r, None)
            new = None
            src = ins.ops.split(",")[-1].strip()
            if ins.mnem == "mov" and dst in self.canon and dst.startswith("r") and "QWORD PTR" in ins.ops:
                new = self.mem_operand(state, ins)
            elif ins.mnem == "mov" and re.fullmatch(r"r\w+", dst) and re.fullmatch(r"r\w+", src) and src in self.canon:
                new = state.get(self.canon[src])  # 64-bit register copy
            elif ins.mnem == "lea" and dst in self.canon and ins.ref is not None:
                new = ("addr", ins.ref)
            if ins.mnem in _X86_WRITES_ALL:
                written = _regs(_outside_brackets(ins.ops), self.canon)
            else:  # Intel syntax: the destination is the first operand
                written = set() if ins.mnem in _X86_READONLY else _regs(_outside_brackets(dst), self.canon)
            for r in written:
                st.pop(r, None)
            if new and dst in self.canon:
                st[self.canon[dst]] = new
            return st
        ops = ins.ops
        dst = self.canon.get(ops.split(",")[0].strip())
        new = None
        if ins.mnem == "adrp" and ins.ref is not None:
            new = ("page", ins.ref)
        elif ins.mnem == "adr" and ins.ref is not None:
            new = ("addr", ins.ref)
        elif ins.mnem == "ldr" and ops.startswith("x") and not ops.endswith("!") and "], " not in ops:
            new = self.mem_operand(state, ins)
        elif ins.mnem == "mov" and (m := re.fullmatch(r"x\d+, (x\d+)", ops)):
            new = state.get(m.group(1))  # 64-bit register copy
        elif ins.mnem == "add" and (m := re.fullmatch(r"x\d+, (x\d+), #(0x[0-9a-f]+|\d+)", ops)):
            v = state.get(m.group(1))
            new = ("addr", v[1] + int(m.group(2), 0)) if v and v[0] in ("page", "addr") else None
        operands = [o.strip() for o in _outside_brackets(ops).split(",")]
        killed = set()
        if _A64_STORE_EXCL.match(ins.mnem) or not _A64_READONLY.match(ins.mnem):
            killed = _regs(" ".join(operands[:2] if _A64_WRITES_TWO.match(ins.mnem) else operands[:1]), self.canon)
        for m in re.finditer(r"\[(\w+)[^\]]*\](!|, )", ops):  # pre/post-index writeback of the base
            killed |= _regs(m.group(1), self.canon)
        for r in killed:
            st.pop(r, None)
        if new and dst:
            st[dst] = new
        return st

    def indirect_target(self, state: dict, ins: _Insn) -> tuple | None:
        """The known value an indirect call/jump goes to (None: unknown)."""
        if self.machine == "x86_64":
            if "[" in ins.ops:
                return self.mem_operand(state, ins)
            return state.get(self.canon.get(ins.ops.strip()))
        return state.get(self.canon.get(ins.ops.split(",")[0].strip()))


def _computed_addresses(insns: list[_Insn], flow: "_Flow") -> set[int]:
    """The addresses code computes pc-relatively (x86 ``lea [rip+d]``, aarch64 ``adr`` and
    ``adrp`` + ``add``, followed in program order): where code pointers handed to the runtime,
    such as parallel closures, come from."""
    out, state, func = set(), {}, None
    for ins in insns:
        if ins.func != func:
            state, func = {}, ins.func
        after = flow.step(state, ins)
        out |= {v[1] for r, v in after.items() if v[0] == "addr" and state.get(r) != v}
        state = after
    return out


def _is_nop(ins: _Insn, machine: str) -> bool:
    """A no-op as compilers emit it for alignment (``nop`` with any prefix or operand, the
    two-byte ``xchg ax,ax``; aarch64 ``nop``)."""
    if machine == "x86_64":
        return ins.mnem == "nop" or (ins.mnem == "xchg" and ins.ops.replace(" ", "") == "ax,ax")
    return ins.mnem == "nop"


def _indirect(ins: _Insn, machine: str) -> bool:
    if machine == "x86_64":
        return ins.mnem in ("call", "jmp") and ins.target is None
    return ins.mnem in ("br", "blr") or ins.mnem.startswith(("braa", "brab", "blraa", "blrab"))


def _meet(a: dict | None, b: dict) -> dict:
    return dict(b) if a is None else {k: v for k, v in a.items() if b.get(k) == v}


def scan_binary(so: Path, *, device_launch: bool = False) -> Report:
    """Check ``so`` (steps 2-5 of the module docstring); one finding per problem.

    ``device_launch`` (CUDA builds only): the host code may call through
    :data:`DEVICE_LAUNCH_SLOTS`, and its indirect calls are counted as ``indirect.launch`` instead
    of being proven (see there)."""
    machine = elf_machine(so)
    if machine is None:
        raise IBertTVMError(f"{so} is not an ELF shared library: not a TVM module")
    if machine not in _ARCH:
        raise IBertTVMError(f"{so} is built for {machine}; verify reads x86_64 and aarch64 code")
    elf, arch = _Elf(so, machine), _ARCH[machine]
    findings: list[Finding] = []

    def finding(where: str, kind: str, detail: str) -> None:
        findings.append(Finding(f"binary:{where}", kind, detail))

    # -- linking -------------------------------------------------------------------------------
    for lib in elf.needed():
        if lib not in NEEDED:
            finding("DT_NEEDED", "link", f"links {lib} (only {', '.join(sorted(NEEDED))} is expected)")
    for tag in ("RPATH", "RUNPATH", "TEXTREL", "REL", "RELR"):
        if elf.dyn(tag):
            finding(f"DT_{tag}", "link", f"the dynamic section has DT_{tag}, which a TVM module does not use")
    for s in elf.segments:
        if s[0] == _PT_LOAD and s[1] & _PF_X and s[1] & _PF_W:
            finding("segments", "link", f"segment at {s[3]:#x} is writable and executable")
    kinds = _RELOCS[machine]
    words: dict[int, tuple] = {}  # address -> what the loader stores there
    helpers = {s.name: (s.value, s.value + max(s.size, 1)) for s in elf.dynamic_symbols()
               if s.name in FP16_HELPERS and s.defined}

    def in_helper(a: int) -> str | None:
        return next((n for n, (lo, hi) in helpers.items() if lo <= a < hi), None)

    pointers: list[int] = []  # code addresses the loader hands out
    for r_off, typ, sym_i, addend in elf.relocations():
        kind = kinds.get(typ)
        if kind is None:
            finding(f"reloc@{r_off:#x}", "link", f"relocation type {typ} is not one TVM's links use")
            continue
        if elf.executable(r_off):
            finding(f"reloc@{r_off:#x}", "link", "relocation patches an executable segment")
        if kind == "RELATIVE":
            words[r_off] = ("local", addend)
            pointers.append(addend)
            continue
        sym = elf.symbol(sym_i)
        if not sym.defined:
            if sym.name in IMPORTS:
                words[r_off] = ("ext", sym.name)
            else:
                finding(f"import:{sym.name}", "import", f"imports {sym.name} ({kind}): not on the allowlist")
        elif sym.name in RUNTIME_SLOTS or (device_launch and sym.name in DEVICE_LAUNCH_SLOTS):
            words[r_off] = ("slot", sym.name)
        elif sym.preemptible:
            finding(f"import:{sym.name}", "import", f"{sym.name} ({kind}) is exported with default visibility: "
                    "the dynamic linker may bind it to another library's definition")
        else:
            words[r_off] = ("local", sym.value + addend)
            pointers.append(sym.value + addend)
    for a in pointers:
        if (h := in_helper(a)) is not None:
            finding(f"reloc->{h}", "fp16", f"a relocated pointer reaches fp16 helper {h}")
    plt_got = elf.dyn("PLTGOT")
    if plt_got:
        words[plt_got[0] + 16] = ("resolver",)  # GOT[2]: ld.so's lazy-binding entry (both psABIs)

    # -- instructions --------------------------------------------------------------------------
    insns = _parse(_objdump(so, arch), machine)
    starts = {i.addr for i in insns}
    entries = {s.value for s in elf.dynamic_symbols() if s.defined and elf.executable(s.value)
               and s.name != "__tvm_ffi__library_bin"}  # the runtime reads library_bin as data
    entries |= {a for a in pointers if elf.executable(a)} | set(elf.dyn("INIT")) | set(elf.dyn("FINI"))
    # code pointers computed pc-relatively (e.g. parallel closures); on aarch64 .rodata shares the
    # executable segment, so only addresses inside code sections count
    flow = _Flow(machine, words)
    entries |= {a for a in _computed_addresses(insns, flow) if elf.code_section(a)}
    for a in sorted(entries - starts):
        finding(f"entry@{a:#x}", "control", "an entry point is not the start of a disassembled instruction")
    ops: Counter = Counter()
    by_func: dict[str, list[_Insn]] = {}
    for ins in insns:
        by_func.setdefault(ins.func, []).append(ins)
        ops[ins.mnem] += 1
        where = f"{ins.func}@{ins.addr:#x}"
        if arch.is_float(ins.mnem):
            finding(ins.func, "llvm", ins.text)
        elif ins.mnem in _ESCAPES[machine]:
            finding(where, "control", f"{ins.text}: leaves the scan (system call or undecodable)")
        if ins.target is not None and ins.target not in starts:
            finding(where, "control", f"{ins.text}: branch target is not a disassembled instruction")
        h = in_helper(ins.target if ins.target is not None else ins.ref if ins.ref is not None else -1)
        if h is not None and ins.func != h:
            finding(where, "fp16", f"reaches fp16 helper {h}: {ins.text}")

    # -- indirect branches: must-dataflow per function -----------------------------------------
    func_of = {i.addr: i.func for i in insns}
    for a in entries & starts:
        func_of[a] = None  # entered from outside: nothing known
    from_outside = set(entries)
    for ins in insns:
        if ins.target is not None and func_of.get(ins.target, ins.func) != ins.func:
            from_outside.add(ins.target)
    for func, body in by_func.items():
        index = {ins.addr: k for k, ins in enumerate(body)}
        preds: list[list[int]] = [[] for _ in body]
        for k, ins in enumerate(body):
            if k + 1 < len(body) and ins.mnem not in arch.ends_block:
                preds[k + 1].append(k)
            if ins.target is not None and ins.target in index and ins.mnem not in arch.calls:
                preds[index[ins.target]].append(k)
        state_in: list[dict | None] = [None] * len(body)
        out: list[dict | None] = [None] * len(body)
        changed = True
        while changed:
            changed = False
            for k, ins in enumerate(body):
                # nothing is known where control enters from outside (an entry point, a branch
                # from another function, the function's first instruction) nor at an
                # instruction no branch or fall-through reaches (it may be a hidden entry). The
                # one exception is a no-op no branch or fall-through reaches: the alignment
                # padding LLVM puts after a jump, before a loop head. It is given no state, so
                # that it does not erase what the loop head knows from its real predecessors.
                # Entering through it is entering the loop head itself, which is no more
                # modelled than entering any other instruction that has predecessors (see
                # "Returns" in the module docstring).
                if k == 0 or ins.addr in from_outside or (not preds[k] and not _is_nop(ins, machine)):
                    s = {}
                else:
                    s = None
                for p in preds[k]:
                    if out[p] is not None:
                        s = _meet(s, out[p])
                if s is None:
                    continue
                if s != state_in[k] or out[k] is None:
                    state_in[k], out[k] = s, flow.step(s, ins)
                    changed = True
        for k, ins in enumerate(body):
            if not _indirect(ins, machine):
                continue
            v = flow.indirect_target(state_in[k] or {}, ins)
            ok = v is not None and (v[0] in ("ext", "slotval", "resolver") or (v[0] == "local" and v[1] in starts))
            if v is not None and v[0] == "local" and (h := in_helper(v[1])):
                finding(f"{func}@{ins.addr:#x}", "fp16", f"reaches fp16 helper {h}: {ins.text}")
            elif not ok and device_launch:
                ops["indirect.launch"] += 1
            elif not ok:
                finding(f"{func}@{ins.addr:#x}", "control", f"{ins.text}: indirect call/jump to an unknown target")
            else:
                ops[f"indirect.{v[0]}"] += 1
    top = dict(Counter({k: n for k, n in ops.items() if not k.startswith("indirect.")}).most_common(15))
    top.update({k: n for k, n in ops.items() if k.startswith("indirect.")}, functions=len(by_func))
    imports = sorted({elf.symbol(i).name for _, t, i, _ in elf.relocations() if i and not elf.symbol(i).defined})
    return Report(what=f"machine code of {so.name} ({machine}; imports: {', '.join(imports) or 'none'})",
                  dtypes={}, ops=top, findings=findings, float_ops=len(findings))
