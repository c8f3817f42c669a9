"""What this machine offers the course: versions, quantized engines, CPU features, data, checkpoints.

Which int8 kernel runs depends on the CPU, as each library sees it: qlib.int8.cpu turns these
flags into a CPU profile (which kernels, int16 saturation or not). Notebook 00 prints all of this.
"""

from __future__ import annotations

import sys

import torch

from .cpuinfo import CPU_FEATURES, cpu_flags, cpu_name  # noqa: F401 (sysinfo.cpu_flags etc.)

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
