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
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .cpu import CpuProfile, profile_from_flags
from .recorder import Call, unique_key

FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx_vnni", "amx_int8",
         "amx_tile", "avx512_bf16", "asimd", "asimddp", "i8mm")
SAMPLE_STRIDE = 61  # compact form: every 61st value of a long output is kept for mismatch counts


class RecordingError(ValueError):
    """A recording file is missing, damaged or not of a known format."""


# --- tensors <-> plain data -----------------------------------------------------------------------------


def sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def uint8_input(seed: int, shape) -> torch.Tensor:
    """The recorded inputs' integers: torch.randint on a CPU generator, the same on every CPU."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, tuple(shape), generator=g, dtype=torch.uint8)


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
    from .. import sysinfo

    profile = profile or CpuProfile.detect()
    flags = sysinfo.cpu_flags()
    return {"model": sysinfo.cpu_name(), "machine": platform.machine(), "system": platform.system(),
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


def write_manifest(folder: Path, note: str = "") -> None:
    folder = Path(folder)
    files = {p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
             for p in recording_files(folder)}
    (folder / "manifest.json").write_text(json.dumps({"note": note, "files": files}, indent=1) + "\n")


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
