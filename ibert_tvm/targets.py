"""Named targets. TVM 0.27 rejects "llvm -mcpu=..." strings: targets are dicts or tags."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import IBertTVMError


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    target: dict | str  # a Target dict, or a tag
    host: dict | None = None
    cross_compiler: str | None = None  # g++ used to link the .so (None: the host's)
    debian_package: str | None = None  # where the cross compiler comes from
    link_options: tuple[str, ...] = ()  # passed to the cross compiler when it links the .so

    def tvm_target(self):
        import tvm

        if self.host is not None:
            return tvm.target.Target(self.target, host=self.host)
        return tvm.target.Target(self.target)


TARGETS: dict[str, TargetSpec] = {
    "llvm": TargetSpec("llvm", "this machine's CPU (generic x86-64 or host)", {"kind": "llvm", "num-cores": 2}),
    "x86": TargetSpec(
        "x86",
        "x86-64 with AVX-512 VNNI (Cascade Lake / Zen 4 and newer)",
        {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2},
    ),
    "x86-amx": TargetSpec(
        "x86-amx",
        "x86-64 with AMX-INT8 (Sapphire Rapids and newer): the linears on AMX tiles, the rest as x86",
        {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2},
    ),
    "aarch64": TargetSpec(
        "aarch64",
        "64-bit ARM with NEON dot-product (Cortex-A76/Neoverse-N1 class)",
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"], "num-cores": 4},
        cross_compiler="aarch64-linux-gnu-g++",
        debian_package="g++-aarch64-linux-gnu",
        # Debian's g++ tells ld to patch around Cortex-A53 erratum 843419 (an adrp at page offset
        # 0xff8/0xffc followed by a load): ld moves the load into a stub and puts a branch over
        # its stub section. That branch, dead but not provably so, can land on __truncsfhf2, and
        # the split adrp/load pair leaves a page address that looks like a code pointer: the
        # machine-code verifier refuses both (a false alarm it cannot rule out). The erratum is
        # in Cortex-A53 r0p0-r0p4 only, an Armv8.0 core without the dot-product instructions this
        # target requires (+dotprod, Armv8.2 and later), so no machine that can run these
        # libraries needs the patch.
        link_options=("-mno-fix-cortex-a53-843419",),
    ),
    "cuda-t4": TargetSpec(
        "cuda-t4", "NVIDIA T4 (sm_75), CUDA; host code for x86-64", "nvidia/nvidia-t4", host={"kind": "llvm"}
    ),
}


def get_target(name: str) -> TargetSpec:
    try:
        return TARGETS[name]
    except KeyError:
        raise IBertTVMError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None
