"""Recordings of what PyTorch's int8 kernels computed on a CPU, and their replay on any machine.

A machine can only run its own CPU's kernels. A recording keeps what they computed (whole
models op by op, single layers with about a million outputs, quantized adds of many sizes and
thread counts) together with the CPU it ran on; replaying it runs the interpreter with that
CPU's profile and compares, so that the course's claim is tested for CPU kinds the machine at
hand is not. Notebook 08, section 7 shows how to record your own CPU.

The format is that of the shared recorder (`record.py` in the course's shared recordings: every
file loads with torch.load(weights_only=True); quantized tensors are {"int", "scale",
"zero_point", "channels_last"}, per-channel weights {"int", "scales", "zero_points", "axis"};
big random inputs are regenerated from a seed by `uint8_input`). Its successor, written by
`python -m qlib.int8.record`, adds to each file's "cpu" entry a "profile" (the CpuProfile fields)
and to each call a "key" and "kwargs" (functional ops included). A compact form (`compact`) keeps
each tensor once, stores long outputs as a sha256 plus a sample, and is lzma-compressed
(`*.pt.xz`); a folder's manifest.json lists every file's sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import platform
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .. import cpuinfo
from ..errors import QlibError, check_choice
from .cpu import CpuProfile, profile_from_flags
from ..recorder import Call, unique_key

FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx_vnni", "amx_int8",
         "amx_tile", "avx512_bf16", "asimd", "asimddp", "i8mm")
SAMPLE_STRIDE = 61  # compact form: every 61st value of a long output is kept for mismatch counts


class RecordingError(QlibError, ValueError):
    """A recording file is missing, damaged or not of a known format."""


# --- tensors <-> plain data -----------------------------------------------------------------------------


def sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def uint8_input(seed: int, shape) -> torch.Tensor:
    """The recorded inputs' integers: torch.randint on a CPU generator, the same on every CPU."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, tuple(shape), generator=g, dtype=torch.uint8)


LAYERS = {  # name: (kind, geometry, input shape, relu): the shared recorder's seven single layers
    "conv3x3-64-relu": ("conv", {"in": 64, "out": 64, "k": 3, "stride": 1, "pad": 1, "groups": 1}, (64, 64, 16, 16), True),
    "conv3x3-64": ("conv", {"in": 64, "out": 64, "k": 3, "stride": 1, "pad": 1, "groups": 1}, (64, 64, 16, 16), False),
    "conv3x3-3-s2": ("conv", {"in": 3, "out": 32, "k": 3, "stride": 2, "pad": 1, "groups": 1}, (64, 3, 32, 32), True),
    "conv1x1-128": ("conv", {"in": 128, "out": 128, "k": 1, "stride": 1, "pad": 0, "groups": 1}, (64, 128, 8, 8), False),
    "dwconv3x3-64": ("conv", {"in": 64, "out": 64, "k": 3, "stride": 1, "pad": 1, "groups": 64}, (64, 64, 16, 16), True),
    "linear-512-256": ("linear", {"in": 512, "out": 256}, (2048, 512), False),
    "linear-512-256-relu": ("linear", {"in": 512, "out": 256}, (2048, 512), True),
}


def layer_case(index: int, reduce_range: bool, per_channel: bool) -> dict:
    """The input, weights and qparams of single layer number `index` (LAYERS' order), generated
    from seeds exactly as the shared recorder does (so a compact recording need not store them)."""
    kind, geo, shape, relu = list(LAYERS.values())[index]
    g = torch.Generator().manual_seed(1000 + index)
    seed = 2000 + index
    xi = uint8_input(seed, shape)
    if reduce_range:
        xi = xi // 2                                  # 0..127, as reduce_range activations
    in_scale, in_zp = 0.0371, (30 if reduce_range else 61)
    wshape = (geo["out"], geo["in"] // geo["groups"], geo["k"], geo["k"]) if kind == "conv" else (geo["out"], geo["in"])
    wi = torch.randint(-127, 128, wshape, generator=g, dtype=torch.int8)
    if per_channel:
        ws = torch.rand(wshape[0], generator=g, dtype=torch.float64) * 0.004 + 0.001
        w = torch._make_per_channel_quantized_tensor(wi, ws, torch.zeros(wshape[0], dtype=torch.int64), 0)
    else:
        w = torch._make_per_tensor_quantized_tensor(wi, 0.0023, 0)
    bias = (torch.rand(wshape[0], generator=g) - 0.5) * 2.0
    fan_in = wshape[1] * (geo["k"] ** 2 if kind == "conv" else 1)
    x = torch._make_per_tensor_quantized_tensor(xi, in_scale, in_zp)
    if kind == "conv":
        x = x.contiguous(memory_format=torch.channels_last)
    return {"x": x, "weight": w, "bias": bias, "out_scale": float(0.0371 * 0.003 * 74 * fan_in ** 0.5 / 40),
            "out_zero_point": 0 if relu else 128,
            "input": {"seed": seed, "shape": list(shape), "halved": reduce_range, "scale": in_scale,
                      "zero_point": in_zp, "sha256": sha256(xi), "channels_last": kind == "conv"}}


def qdict(t):
    """A tensor (quantized or not), list or value as plain data torch.load(weights_only=True) reads."""
    if isinstance(t, torch.Tensor) and t.is_quantized:
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            return {"int": t.int_repr().clone(), "scales": t.q_per_channel_scales().clone(),
                    "zero_points": t.q_per_channel_zero_points().clone(), "axis": int(t.q_per_channel_axis())}
        return {"int": t.int_repr().contiguous().clone(), "scale": float(t.q_scale()),
                "zero_point": int(t.q_zero_point()),
                "channels_last": bool(t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
                                      and not t.is_contiguous())}
    if isinstance(t, torch.Tensor):
        return {"float": t.detach().clone()}
    if isinstance(t, (list, tuple)):
        return {"list": [qdict(v) for v in t]}
    return {"value": t if isinstance(t, (int, float, bool, str, type(None))) else repr(t)}


def from_qdict(d):
    """The inverse of qdict: quantized tensors in their recorded memory order."""
    if "list" in d:
        return [from_qdict(v) for v in d["list"]]
    if "float" in d:
        return d["float"]
    if "value" in d:
        return d["value"]
    if "scales" in d:
        return torch._make_per_channel_quantized_tensor(d["int"], d["scales"], d["zero_points"], d["axis"])
    u = d["int"]
    if d.get("channels_last") and u.dim() == 4:
        u = u.contiguous(memory_format=torch.channels_last)
    return torch._make_per_tensor_quantized_tensor(u, d["scale"], d["zero_point"])


def cpu_info(profile: CpuProfile | None = None) -> dict:
    """The "cpu" entry of a recording: the shared format's keys plus the profile."""
    profile = profile or CpuProfile.detect()
    flags = cpuinfo.cpu_flags()
    return {"model": cpuinfo.cpu_name(), "machine": platform.machine(), "system": platform.system(),
            "flags": " ".join(f for f in FLAGS if f in flags), "aten_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": str(torch.__version__), "threads": torch.get_num_threads(),
            "profile": {f.name: getattr(profile, f.name) for f in fields(CpuProfile)}}


def profile_of(cpu: dict) -> CpuProfile:
    """The CPU profile a recording was made with (derived from its flags in the shared format)."""
    if "profile" in cpu:
        return CpuProfile(**cpu["profile"]).replace(threads=cpu.get("threads"))
    return profile_from_flags(set(cpu.get("flags", "").split()), arch=cpu.get("machine", "x86_64"),
                              system=cpu.get("system", "Linux"), aten=cpu.get("aten_capability"),
                              threads=cpu.get("threads"))


# --- the course's own recordings ---------------------------------------------------------------------------

def course_recordings():
    """data/kernel-recordings: one folder per CPU kind, replayed by the test suite."""
    from ..paths import REPO_ROOT

    return REPO_ROOT / "data" / "kernel-recordings"


def recorded_kinds() -> list[str]:
    """The CPU kinds the course holds recordings of (their folders' names)."""
    root = course_recordings()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


# --- files -------------------------------------------------------------------------------------------------


def save(obj: dict, path: Path) -> None:
    """torch.save, lzma-compressed for *.xz, written to a temporary file first (never half written)."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = lzma.compress(buffer.getvalue(), preset=9) if path.suffix == ".xz" else buffer.getvalue()
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def load(path: Path) -> dict:
    """A recording file (plain or .xz), with weights_only=True; checked against the folder's manifest."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RecordingError(f"cannot read recording {path}: {error}") from error
    manifest = path.parent / "manifest.json"
    if manifest.exists():
        expected = json.loads(manifest.read_text()).get("files", {}).get(path.name, {}).get("sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise RecordingError(f"{path} does not match the sha256 in {manifest}: the file is damaged or was "
                                 f"changed; restore it with `git checkout -- {path}` or record it again.")
    try:
        if path.suffix == ".xz":
            data = lzma.decompress(data)
        with warnings.catch_warnings():   # loading quantized tensors warns about TypedStorage
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:  # torch.load's and lzma's errors say little about which file
        raise RecordingError(f"{path} is not a readable recording ({type(error).__name__}: {error}).") from error


def recording_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise RecordingError(f"{folder} is not a folder of recordings.")
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".pt", ".pt.xz")))
    if not files:
        raise RecordingError(f"{folder} holds no recording (*.pt or *.pt.xz files).")
    return files


# How a folder's kernels ran: on the CPU itself, on another CPU with the libraries capped by environment
# variables, or PyTorch's real build for another architecture under QEMU user-mode emulation.
HOW_RECORDED = ("real", "emulated", "qemu")


def write_manifest(folder: Path, note: str = "", recorded: str = "real") -> None:
    folder = Path(folder)
    recorded = check_choice(recorded, "recorded", HOW_RECORDED, "how the kernels ran")
    files = {p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
             for p in recording_files(folder)}
    text = json.dumps({"recorded": recorded, "note": note, "files": files}, indent=1) + "\n"
    tmp = folder / "manifest.json.part"
    tmp.write_text(text)
    tmp.replace(folder / "manifest.json")


# --- calls ------------------------------------------------------------------------------------------------


def calls_of(recording: dict, tensors: list | None = None) -> list[Call]:
    """The recorded calls as recorder.Call objects (keys made unique as the recorder does)."""
    seen, calls = {}, []
    for c in recording["calls"]:
        key = unique_key(seen, c.get("key", c["path"]).split("#")[0])
        seen[key] = True
        args = [from_qdict(resolve(a, tensors)) for a in c["inputs"]]
        kwargs = {k: from_qdict(resolve(v, tensors)) for k, v in c.get("kwargs", {}).items()}
        calls.append(Call(key, c["path"], c["type"], c["method"], args, kwargs, from_qdict(resolve(c["output"], tensors))))
    return calls


def resolve(d, tensors):
    """Compact recordings keep each tensor once in a pool: {"ref": i} points into it."""
    if tensors is None or not isinstance(d, dict):
        return d
    if "list" in d:
        return {"list": [resolve(v, tensors) for v in d["list"]]}
    if "ref" in d:
        return {**{k: v for k, v in d.items() if k != "ref"}, "int": tensors[d["ref"]]}
    return d


@dataclass
class Outcome:
    """What replaying one recording file found."""

    name: str
    compared: int = 0                       # integer (or float) outputs compared
    mismatches: int = 0
    parts: dict = field(default_factory=dict)   # part -> (compared, mismatches)
    note: str = ""

    def add(self, part: str, compared: int, mismatches: int) -> None:
        c, m = self.parts.get(part, (0, 0))
        self.parts[part] = (c + compared, m + mismatches)
        self.compared += compared
        self.mismatches += mismatches

    @property
    def exact(self) -> bool:
        return self.compared > 0 and self.mismatches == 0

    def line(self) -> str:
        parts = "; ".join(f"{p} {m:,}/{c:,}" for p, (c, m) in self.parts.items())
        verdict = "exact" if self.exact else "NOT EXACT"
        return f"{self.name}: {verdict} ({parts}){' - ' + self.note if self.note else ''}"
