"""The CPU profile: everything about a processor that changes what PyTorch's int8 kernels compute.

PyTorch's quantized kernels come from three libraries, and each picks its own code path from the
CPU it runs on:

- **ATen** (quantize, the quantized add, cat, pooling, activations) is compiled once per
  *capability* (DEFAULT, AVX2, AVX512) and dispatches on `torch.backends.cpu.get_cpu_capability()`;
  its quantized kernels exist only in the AVX2 build (AVX512 CPUs run it too). A vector loop
  leaves its last values to a scalar tail that rounds differently (no fused multiply-add).
- **FBGEMM** (engine fbgemm; engine x86 for linear layers and some convs) picks an instruction set:
  AVX2 and AVX-512 add pairs of u8 x s8 products into a saturating int16 (`vpmaddubsw`); with
  AVX-512 VNNI (`vpdpbusd`) there is no such step.
- **oneDNN** (engine onednn; engine x86 for convs where PyTorch prefers it) picks an ISA too:
  jit kernels on AVX2 / AVX-512 without VNNI (int16 pairs again), brgemm kernels with VNNI
  (which apply the input and weight scales one after the other), AMX tiles (scales combined).

PyTorch routes an x86-engine convolution to oneDNN only on Linux and only if the CPU has
AVX-512 VNNI (`should_use_onednn_quant` in OnednnUtils.h; AVX-VNNI alone does not count).

A `CpuProfile` holds those choices. `CpuProfile.detect()` reads them from this machine (honouring
the same environment variables the libraries honour: ATEN_CPU_CAPABILITY, FBGEMM_ENABLE_INSTRUCTIONS,
ONEDNN_MAX_CPU_ISA), `KINDS` names the CPU kinds the course knows, and
`int8.Interpreter(qmodel, cpu=KINDS["avx2"])` computes on any machine what that kind computes.
Explained in notebook 08, section 7.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass

import torch

from .. import cpuinfo
from ..errors import BadInputError

# Each library's instruction-set levels, lowest first (an environment cap keeps the lower of two).
FBGEMM_LEVELS = ("avx2", "avx512", "avx512_vnni")
ONEDNN_LEVELS = ("avx2", "avx2_vnni", "avx512_core", "avx512_core_vnni", "avx512_core_amx")
ATEN_LEVELS = ("DEFAULT", "AVX2", "AVX512")
# Environment values the libraries accept -> our level names.
_FBGEMM_ENV = {"AVX2": "avx2", "AVX512": "avx512", "AVX512_E1": "avx512_vnni", "AVX512_256": "avx512",
               "AVX512_E1_256": "avx512_vnni"}  # the 256-bit variants compute the same integers
_ONEDNN_ENV = {"SSE41": None, "AVX": None, "AVX2": "avx2", "AVX2_VNNI": "avx2_vnni",
               "AVX2_VNNI_2": "avx2_vnni", "AVX512_CORE": "avx512_core",
               "AVX512_CORE_VNNI": "avx512_core_vnni", "AVX512_CORE_BF16": "avx512_core_vnni",
               "AVX512_CORE_FP16": "avx512_core_vnni", "AVX10_1_512": "avx512_core_vnni",
               "AVX512_CORE_AMX": "avx512_core_amx", "AVX512_CORE_AMX_FP16": "avx512_core_amx",
               "AVX10_1_512_AMX": "avx512_core_amx", "AVX10_1_512_AMX_FP16": "avx512_core_amx",
               "ALL": "avx512_core_amx"}
# avx512dq comes with these on every CPU that has them (and the shared recordings do not list it)
_AVX512_CORE = {"avx512f", "avx512bw", "avx512vl"}


@dataclass(frozen=True)
class CpuProfile:
    """What one CPU kind makes PyTorch's int8 kernels do (see the module docstring)."""

    kind: str                       # a short name, e.g. "avx2", "avx512-vnni", "amx", "arm64"
    arch: str = "x86_64"            # platform.machine()
    system: str = "Linux"           # platform.system(): the x86 engine's routing asks for Linux
    aten: str = "AVX2"              # ATen capability: DEFAULT, AVX2 or AVX512
    fbgemm: str | None = "avx2"     # FBGEMM's instruction set (None: no FBGEMM, e.g. ARM)
    onednn: str | None = "avx2"     # oneDNN's ISA for int8 (None: no oneDNN int8 kernels)
    avx512_vnni: bool = False       # CPUID AVX-512 VNNI: PyTorch's x86 routing, FBGEMM's groupwise convs
    avx512: bool = False            # CPUID AVX-512 (F, BW, VL): how many groups FBGEMM's groupwise kernel takes
    threads: int | None = None      # ATen's threads (the add's scalar tail); None: torch's, at call time
    int16_saturation: bool | None = None  # None: as the kernels do; False: a what-if without it
    description: str = ""

    def __post_init__(self):
        # "no" or 0 would count as True or False in silence: only None, True or False mean something.
        if self.int16_saturation is not None and not isinstance(self.int16_saturation, bool):
            raise BadInputError(
                f"int16_saturation={self.int16_saturation!r} (a {type(self.int16_saturation).__name__}) is not a "
                "switch the interpreter can read: it decides whether u8 x s8 products are added two by two "
                "into saturating int16, and any other value would be taken as True or False in silence. "
                "Pass None (as this CPU's kernels do), True or False.")

    # --- the decisions, one property each ---------------------------------------------------------

    @property
    def x86_conv_prefers_onednn(self) -> bool:
        """PyTorch's should_use_onednn_quant: Linux and AVX-512 VNNI (plus per-layer conditions)."""
        return self.system == "Linux" and self.avx512_vnni and self.onednn is not None

    def fbgemm_int16_pairs(self, path: str = "gemm") -> bool:
        """Does FBGEMM add u8 x s8 products two by two into int16 with saturation on this `path`?
        Its GEMM kernels (im2col, pointwise, linear) do without VNNI in its instruction set; the
        groupwise kernel reads CPUID itself; the depthwise kernel is AVX2 code on every CPU."""
        if self.int16_saturation is not None:
            return self.int16_saturation and self.fbgemm is not None
        if path == "depthwise":
            return True
        if path == "groupwise":
            return not self.avx512_vnni
        return self.fbgemm in ("avx2", "avx512")

    @property
    def onednn_int16_pairs(self) -> bool:
        """oneDNN's kernels without VNNI do the same, with their own pairing (onednn.py: which ones)."""
        if self.int16_saturation is not None:
            return self.int16_saturation and self.onednn is not None
        return self.onednn in ("avx2", "avx512_core")


    @property
    def quantized_vectors(self) -> bool:
        """Do ATen's quantized kernels run vectorized (DQ_V with a fused multiply-add)? They are
        compiled for AVX2 only (QuantizedOpKernels.cpp registers no AVX-512 version), so AVX2 and
        AVX512 CPUs run the same AVX2 code; the DEFAULT build dequantizes value by value."""
        return self.aten in ("AVX2", "AVX512")

    def aten_threads(self) -> int:
        return self.threads if self.threads is not None else torch.get_num_threads()

    # --- building and showing ---------------------------------------------------------------------

    def replace(self, **changes) -> "CpuProfile":
        return dataclasses.replace(self, **changes)

    def summary(self) -> dict[str, object]:
        """The profile as notebooks 00 and 08 print it: each choice and what it implies."""
        return {
            "CPU kind": self.kind, "description": self.description or "-",
            "architecture / OS": f"{self.arch} / {self.system}",
            "ATen capability": self.aten,
            "FBGEMM instruction set": self.fbgemm or "none",
            "oneDNN ISA": self.onednn or "none",
            "x86 engine: convs run": ("oneDNN (where allowed)" if self.x86_conv_prefers_onednn else "FBGEMM")
            if self.fbgemm else "- (no x86 engine the course models)",
            "FBGEMM int16 pair saturation": "depthwise convs; " + ", ".join(
                p for p in ("gemm", "groupwise") if self.fbgemm_int16_pairs(p)) if self.fbgemm else "-",
            "oneDNN int16 pair saturation": self.onednn_int16_pairs,
            "ATen quantized kernels": "AVX2 build, vectorized" if self.quantized_vectors else "scalar",
            "threads": self.threads if self.threads is not None else f"torch's ({torch.get_num_threads()})",
        }

    @classmethod
    def detect(cls) -> "CpuProfile":
        """This machine, as PyTorch's libraries see it (environment caps included)."""
        flags = cpuinfo.cpu_flags()
        return profile_from_flags(flags, arch=platform.machine(), system=platform.system(),
                                  aten=torch.backends.cpu.get_cpu_capability(), env=os.environ)


def _cap(level: str | None, cap: str | None, levels: tuple) -> str | None:
    if level is None or cap is None:
        return level if cap is None else None
    return levels[min(levels.index(level), levels.index(cap))]


def profile_from_flags(flags: set[str], arch: str = "x86_64", system: str = "Linux", aten: str | None = None,
                       env: dict | None = None, threads: int | None = None) -> CpuProfile:
    """The profile of a CPU with these /proc/cpuinfo flags, as each library would decide.

    `env` may hold the libraries' caps (FBGEMM_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA or
    DNNL_MAX_CPU_ISA); `aten` is ATen's capability, derived from the flags when not given.
    """
    env = env or {}
    flags = set(flags)
    if arch.lower() in ("arm64", "aarch64"):
        return KINDS["arm64"].replace(arch=arch, system=system, aten=aten or "DEFAULT", threads=threads)
    core512 = _AVX512_CORE <= flags
    vnni512 = core512 and "avx512_vnni" in flags
    if "avx2" not in flags:
        fbgemm = onednn = None
    else:
        fbgemm = "avx512_vnni" if vnni512 else "avx512" if core512 else "avx2"
        if vnni512 and {"amx_int8", "amx_tile"} <= flags:
            onednn = "avx512_core_amx"
        elif vnni512:
            onednn = "avx512_core_vnni"
        elif core512:
            onednn = "avx512_core"
        elif "avx_vnni" in flags:
            onednn = "avx2_vnni"
        else:
            onednn = "avx2"
    fbgemm_cap = env.get("FBGEMM_ENABLE_INSTRUCTIONS")
    if fbgemm_cap:
        fbgemm = _cap(fbgemm, _FBGEMM_ENV.get(fbgemm_cap.upper(), fbgemm), FBGEMM_LEVELS)
    onednn_cap = env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA")
    if onednn_cap:
        onednn = _cap(onednn, _ONEDNN_ENV.get(onednn_cap.upper(), onednn), ONEDNN_LEVELS)
    if aten is None:
        aten = "AVX512" if core512 else "AVX2" if "avx2" in flags else "DEFAULT"
    profile = CpuProfile(kind="", arch=arch, system=system, aten=aten, fbgemm=fbgemm, onednn=onednn,
                         avx512_vnni=vnni512, avx512=core512, threads=threads)
    return profile.replace(kind=kind_of(profile), description=_describe(profile))


def kind_of(profile: CpuProfile) -> str:
    """The name of the known kind this profile computes like, else a name built from its parts."""
    for name, known in KINDS.items():
        if _same_arithmetic(profile, known):
            return name
    return f"{profile.arch}-aten_{profile.aten}-fbgemm_{profile.fbgemm}-onednn_{profile.onednn}" + (
        "-x86conv_onednn" if profile.x86_conv_prefers_onednn else "")


def _same_arithmetic(a: CpuProfile, b: CpuProfile) -> bool:
    keys = ("arch", "aten", "fbgemm", "onednn", "avx512_vnni", "avx512")
    return (all(getattr(a, k) == getattr(b, k) for k in keys)
            and a.x86_conv_prefers_onednn == b.x86_conv_prefers_onednn)


def _describe(profile: CpuProfile) -> str:
    known = KINDS.get(kind_of(profile))
    return known.description if known else "a CPU kind the course has no name for"


# The CPU kinds the course knows. Which of them the course has checked, and how, is in
# qlib.int8.recordings (recordings replayed by the tests) and the README.
KINDS: dict[str, CpuProfile] = {
    "avx2": CpuProfile(
        "avx2", aten="AVX2", fbgemm="avx2", onednn="avx2",
        description="x86-64 with AVX2, no VNNI (e.g. AMD EPYC Zen 2/3, Intel Haswell to Comet Lake)"),
    "avx2-vnni": CpuProfile(
        "avx2-vnni", aten="AVX2", fbgemm="avx2", onednn="avx2_vnni",
        description="x86-64 with AVX-VNNI but no AVX-512 (e.g. Intel Alder Lake and later desktops)"),
    "avx512": CpuProfile(
        "avx512", aten="AVX512", fbgemm="avx512", onednn="avx512_core", avx512=True,
        description="x86-64 with AVX-512, no VNNI (e.g. Intel Skylake-SP)"),
    "avx512-vnni": CpuProfile(
        "avx512-vnni", aten="AVX512", fbgemm="avx512_vnni", onednn="avx512_core_vnni", avx512_vnni=True, avx512=True,
        description="x86-64 with AVX-512 VNNI (e.g. AMD EPYC Zen 4/5, Intel Cascade Lake, Ice Lake)"),
    "amx": CpuProfile(
        "amx", aten="AVX512", fbgemm="avx512_vnni", onednn="avx512_core_amx", avx512_vnni=True, avx512=True,
        description="x86-64 with AVX-512 VNNI and AMX (Intel Sapphire Rapids and later Xeons)"),
    "arm64": CpuProfile(
        "arm64", arch="arm64", system="Darwin", aten="DEFAULT", fbgemm=None, onednn=None,
        description="ARM64 (Apple Silicon, ARM Linux): engine qnnpack (Linux torch's x86 / onednn: not modelled)"),
}
