"""What this machine offers the course: versions, quantized engines, CPU features, data, checkpoints.

Which int8 kernel runs depends on the CPU: AVX2 without VNNI adds pairs of u8 x s8 products in
saturating int16 (the reason for reduce_range), AVX512-VNNI / AVX-VNNI / AMX do not saturate and
let the x86 engine pick oneDNN for convolutions. Notebook 00 prints all of this.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch

CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo does not exist)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_vnni(flags: set[str] | None = None) -> bool:
    """True when u8 x s8 dot products accumulate in int32 without int16 saturation."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


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
    flags = cpu_flags()
    return {
        **versions(),
        "quantized engines": [e for e in torch.backends.quantized.supported_engines if e != "none"],
        "default engine": torch.backends.quantized.engine,
        "cpu": cpu_name(),
        "cpu features": [f for f in CPU_FEATURES if f in flags],
        "vnni (no int16 saturation)": has_vnni(flags),
        "torch threads": torch.get_num_threads(),
    }
