"""The CPU's name and feature flags, as the operating system reports them: what qlib.int8.cpu turns
into a CPU profile and qlib.sysinfo shows (notebook 00). A module of its own so that both can use it.
"""

from __future__ import annotations

import platform
from pathlib import Path

CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8",
                "asimd", "asimddp", "i8mm")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux names them: /proc/cpuinfo's "flags" (x86) or "Features"
    (ARM) line; on macOS, sysctl's feature lists in Linux's spelling; else empty."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return _macos_flags() if platform.system() == "Darwin" and cpuinfo == Path("/proc/cpuinfo") else set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _macos_flags() -> set[str]:
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    names = {"AVX2": "avx2", "FMA": "fma", "AVX512F": "avx512f", "AVX512BW": "avx512bw", "AVX512VL": "avx512vl",
             "AVX512DQ": "avx512dq", "AVX512VNNI": "avx512_vnni"}
    return {names[w] for w in out.split() if w in names}


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
