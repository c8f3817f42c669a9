"""Record what PyTorch's int8 kernels compute on this CPU, for replay on any other machine.

    python -m qlib.int8.record DIR [--quick] [--search N] [--compact DIR]

Writes, for every engine this torch has (the format: qlib.int8.recordings):
- model-<checkpoint>-<qconfig>.pt: both course checkpoints converted under each engine's default
  qconfig (and onednn with the x86 one), every quantized op PyTorch ran on test images 0-7 plus up
  to 8 "telling" ones, and the outputs for the whole test split;
- layers-<engine>-<weights>-<activations>.pt: 7 single conv / linear layers, 0.5-1 M outputs each;
- add-<engine>.pt: quantized add / add_relu of 12 sizes, both memory layouts, 1 and 2 threads.
A test image is "telling" when the interpreter, computing as another CPU kind (int8.cpu.KINDS),
gets some op's output wrong on it: these are the images on which CPU kinds differ. `--compact`
writes the compact form (*.pt.xz, a manifest) that the course keeps in data/kernel-recordings.
The full run takes an hour or more on a 2-core laptop (the search); `--quick` about a minute.
The environment caps ATEN_CPU_CAPABILITY, FBGEMM_ENABLE_INSTRUCTIONS and ONEDNN_MAX_CPU_ISA
record what another CPU kind's libraries compute (the "cpu" entry says so).
Notebook 08, section 8.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from torch.ao.quantization import get_default_qconfig

from .. import engines, ptq
from ..quiet import quiet_deprecations
from .compare import record_pytorch
from .cpu import KINDS, CpuProfile
from .interpreter import Interpreter
from .recordings import LAYERS, cpu_info, layer_case, qdict, save, sha256, uint8_input
from .compact import compact_folder

ENV_CAPS = ("ATEN_CPU_CAPABILITY", "FBGEMM_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def this_cpu() -> dict:
    info = cpu_info()
    caps = {k: os.environ[k] for k in ENV_CAPS if os.environ.get(k)}
    if caps:
        info["env"] = caps
    return info


def plans() -> list[tuple[str, str, str]]:
    """(label, engine, qconfig engine) for every engine this torch has."""
    have = engines.available_engines()
    found = [(e, e, e) for e in ("x86", "fbgemm", "qnnpack", "onednn") if e in have]
    if "onednn" in have:
        found.append(("onednn-x86qconfig", "onednn", "x86"))
    return found


def telling_images(qmodel, engine: str, images: torch.Tensor, profile: CpuProfile, batch: int = 250) -> list[int]:
    """Test images on which the interpreter computing as another x86 CPU kind gets an op wrong."""
    others = [Interpreter(qmodel, engine=engine, cpu=k) for name, k in KINDS.items()
              if k.arch == profile.arch and name != profile.kind]
    found = []
    for start in range(0, len(images), batch):
        xb = images[start:start + batch]
        _, rec = record_pytorch(qmodel, xb, engine)
        theirs = rec.outputs()
        bad = torch.zeros(len(xb), dtype=torch.bool)
        for interpreter in others:
            ours = {}
            interpreter(xb, record=ours)
            for key, reference in theirs.items():
                mine = ours.get(key)
                if mine is not None and mine.shape == reference.shape and mine.dim() > 1 and len(mine) == len(xb):
                    bad |= (mine.to(torch.int64) != reference).flatten(1).any(1)
        found += (torch.nonzero(bad).flatten() + start).tolist()
    return found


def call_dict(call) -> dict:
    return {"key": call.key, "path": call.path, "type": call.type, "method": call.method,
            "inputs": [qdict(a) for a in call.args], "kwargs": {k: qdict(v) for k, v in call.kwargs.items()},
            "output": qdict(call.output)}


def record_models(out: Path, search: int, telling: int = 8, test_images: int | None = None,
                  calibration_images: int = 512) -> None:
    from .. import data, pretrained

    images = data.fashion_mnist("test").tensors()[0][:test_images]
    calibration = data.calibration_subset(calibration_images)
    batches = [torch.stack([calibration[i][0] for i in range(j, min(j + 128, calibration_images))])
               for j in range(0, calibration_images, 128)]
    profile = CpuProfile.detect()
    for name in ("seednet-fmnist", "resnet18-fmnist"):
        for label, engine, qconfig in plans():
            q = ptq.quantize_static(pretrained.load(name, quantizable=True), batches, engine=engine,
                                    progress=False, qconfig=get_default_qconfig(qconfig))
            with torch.inference_mode():
                logits = [_logit_ints(q, images[i:i + 500]) for i in range(0, len(images), 500)]
            hard = telling_images(q, engine, images[:search], profile)
            chosen = sorted(set(range(8)) | set([i for i in hard if i >= 8][:telling]))
            x = images[chosen]
            y, rec = record_pytorch(q, x, engine)
            last = logits[0]
            save({"cpu": this_cpu(), "recipe": {"checkpoint": name, "engine": engine, "qconfig": label},
                  "state_dict": q.state_dict(),
                  "test_outputs": {"batch_size": 500, "y": {"int": torch.cat([t["int"] for t in logits]),
                                                            "scale": last["scale"], "zero_point": last["zero_point"]}},
                  "hard_search": {"images": search, "hard": hard, "meaning": "telling: other CPU kinds differ"},
                  "indices": chosen, "x": x, "y": y, "calls": [call_dict(c) for c in rec.calls]},
                 out / f"model-{name}-{label}.pt")
            print(f"model-{name}-{label}: {len(hard)} telling images of {search}; recorded {len(chosen)}", flush=True)


def _logit_ints(qmodel, x) -> dict:
    """The int8 logits (the DeQuantStub's input) of qmodel on x, with their qparams."""
    seen = {}
    handle = qmodel.dequant.register_forward_pre_hook(lambda m, args: seen.update(t=args[0]))
    try:
        out = qmodel(x)
    finally:
        handle.remove()
    t = seen["t"]
    logits = {"int": t.int_repr().clone(), "scale": float(t.q_scale()), "zero_point": int(t.q_zero_point())}
    expected = (logits["int"].to(torch.float32) - logits["zero_point"]) * torch.tensor(logits["scale"])
    assert torch.equal(expected, out), "the model's output is not its int8 logits dequantized"
    return logits


def record_layers(out: Path, engine: str, label: str, reduce_range: bool, per_channel: bool) -> None:
    res = {"cpu": this_cpu(), "engine": engine, "label": label, "layers": {}}
    with engines.engine_active(engine):
        for index, name in enumerate(LAYERS):
            case = layer_case(index, reduce_range, per_channel)
            kind, geo, shape, relu = LAYERS[name]
            if kind == "conv":
                cls = nniq.ConvReLU2d if relu else nnq.Conv2d
                layer = cls(geo["in"], geo["out"], geo["k"], stride=geo["stride"], padding=geo["pad"],
                            groups=geo["groups"])
            else:
                layer = (nniq.LinearReLU if relu else nnq.Linear)(geo["in"], geo["out"])
            layer.set_weight_bias(case["weight"], case["bias"])
            layer.scale, layer.zero_point = case["out_scale"], case["out_zero_point"]
            with torch.inference_mode():
                y = layer(case["x"])
            res["layers"][name] = {"kind": kind, "geometry": geo, "relu": relu, "input": case["input"],
                                   "weight": qdict(case["weight"]), "bias": case["bias"],
                                   "out_scale": case["out_scale"], "out_zero_point": case["out_zero_point"],
                                   "output": y.int_repr().contiguous()}
    save(res, out / f"layers-{label}.pt")
    print(f"layers-{label}: {len(res['layers'])} layers", flush=True)


ADD_SHAPES = [(1, 1, 7, 9), (1, 3, 5, 5), (2, 16, 28, 28), (1, 64, 16, 32), (3, 64, 13, 13), (4, 128, 8, 8),
              (16, 16, 28, 28), (1, 1, 1, 32767), (1, 1, 1, 32768), (1, 1, 1, 32769), (1, 1, 1, 65537),
              (1, 1, 1, 100003)]


def record_adds(out: Path, engine: str) -> None:
    res = {"cpu": this_cpu(), "engine": engine, "adds": []}
    threads = torch.get_num_threads()
    with engines.engine_active(engine):
        for i, shape in enumerate(ADD_SHAPES):
            ai, bi = uint8_input(3000 + i, shape), uint8_input(4000 + i, shape)
            for layout in ("contiguous", "channels_last"):
                if layout == "channels_last" and shape[1] == 1:
                    continue
                a = torch._make_per_tensor_quantized_tensor(ai, 0.0471, 61)
                b = torch._make_per_tensor_quantized_tensor(bi, 0.0313, 70)
                if layout == "channels_last":
                    a, b = (t.contiguous(memory_format=torch.channels_last) for t in (a, b))
                for n in (1, 2):
                    torch.set_num_threads(n)
                    for relu in (False, True):
                        f = nnq.QFunctional()
                        f.scale, f.zero_point = 0.0597, 66
                        with torch.inference_mode():
                            c = f.add_relu(a, b) if relu else f.add(a, b)
                        res["adds"].append({"shape": list(shape), "layout": layout, "threads": n, "relu": relu,
                                            "a": {"seed": 3000 + i, "scale": 0.0471, "zero_point": 61, "sha256": sha256(ai)},
                                            "b": {"seed": 4000 + i, "scale": 0.0313, "zero_point": 70, "sha256": sha256(bi)},
                                            "out_scale": 0.0597, "out_zero_point": 66,
                                            "output": c.int_repr().contiguous()})
    torch.set_num_threads(threads)
    save(res, out / f"add-{engine}.pt")
    print(f"add-{engine}: {len(res['adds'])} adds", flush=True)


QUICK = {"search": 0, "test_images": 500, "calibration_images": 128}  # --quick: about a minute


def record(out: Path, search: int = 1000, test_images: int | None = None, calibration_images: int = 512) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record_models(out, search, test_images=test_images, calibration_images=calibration_images)
    recorded = [engine for label, engine, _ in plans() if label == engine]
    for engine in recorded:
        record_layers(out, engine, f"{engine}-perchannel-rr", reduce_range=True, per_channel=True)
        record_adds(out, engine)
    if "onednn" in recorded:
        record_layers(out, "onednn", "onednn-perchannel-full", reduce_range=False, per_channel=True)
    if "qnnpack" in recorded:
        record_layers(out, "qnnpack", "qnnpack-pertensor-full", reduce_range=False, per_channel=False)
    if "fbgemm" in recorded:
        record_layers(out, "fbgemm", "fbgemm-pertensor-rr", reduce_range=True, per_channel=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the recordings (created if missing)")
    parser.add_argument("--search", type=int, default=1000, help="test images searched for telling ones")
    parser.add_argument("--quick", action="store_true",
                        help="about a minute: no search for telling images, 128 calibration images, outputs "
                             "of the first 500 test images (what to run to share your CPU)")
    parser.add_argument("--compact", type=Path, default=None,
                        help="also write the compact form (*.pt.xz + manifest.json) into this folder")
    args = parser.parse_args(argv)
    quiet_deprecations()
    warnings.filterwarnings("ignore", message=r"must run observer")
    options = dict(QUICK) if args.quick else {"search": args.search}
    print(f"recording this CPU ({CpuProfile.detect().kind}) into {args.folder}"
          f"{' (quick)' if args.quick else ''}", flush=True)
    record(args.folder, **options)
    if args.compact:
        compact_folder(args.folder, args.compact)
    return 0


if __name__ == "__main__":
    sys.exit(main())
