"""What this machine offers the course: versions, quantized engines, CPU features, data, checkpoints.

Which int8 kernel runs depends on the CPU, as each library sees it: qlib.int8.cpu turns these
flags into a CPU profile (which kernels, int16 saturation or not). Notebook 00 prints all of this.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch

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


def versions() -> dict[str, str]:
    import ipywidgets
    import matplotlib
    import pandas
    import torchvision

    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pandas": pandas.__version__,
            "matplotlib": matplotlib.__version__, "ipywidgets": ipywidgets.__version__}


def report() -> dict[str, object]:
    """Everything notebook 00 shows, as one dictionary."""
    from .int8.cpu import CpuProfile

    flags = cpu_flags()
    return {
        **versions(),
        "quantized engines": [e for e in torch.backends.quantized.supported_engines if e != "none"],
        "default engine": torch.backends.quantized.engine,
        "cpu": cpu_name(),
        "cpu features": [f for f in CPU_FEATURES if f in flags],
        "int8 CPU kind": CpuProfile.detect().kind,
        "torch threads": torch.get_num_threads(),
    }
