"""Replay recordings of PyTorch's int8 kernels with the interpreter, under the recorded CPU's profile.

    python -m qlib.int8.replay DIR [--images N]

One line per recording file, then `N/M recordings exact`; exit status 0 only when all are.
Whole-model recordings are replayed three ways: op by op on PyTorch's own inputs (teacher
forced: a mismatch names the op), the whole model on the recorded images, and the model on the
Fashion-MNIST test images whose outputs were recorded (`--images` limits how many).
Notebook 08, section 8.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from torch.ao.quantization import get_default_qconfig

from .. import engines, ptq
from ..quiet import quiet_deprecations
from . import layers
from .interpreter import Interpreter, layer_for
from .recordings import (LAYERS, SAMPLE_STRIDE, layer_case, Outcome, RecordingError, calls_of, from_qdict, load, profile_of,
                         recording_files, sha256, uint8_input)


def packing_engine(engine: str) -> str:
    """The engine to build the converted modules under: the recorded one where this torch has it
    (weights are only stored, the interpreter does the arithmetic), else qnnpack (e.g. on ARM)."""
    return engine if engine in engines.available_engines() else "qnnpack"


def _compare(outcome: Outcome, part: str, mine: torch.Tensor, expected: dict | torch.Tensor) -> None:
    """Count mismatches against a full tensor, or against a compact {"sha256", "sample"}."""
    mine = mine.contiguous()
    if isinstance(expected, torch.Tensor):
        outcome.add(part, expected.numel(), int((mine.reshape(expected.shape) != expected).sum()))
    elif sha256(mine) == expected["sha256"]:
        outcome.add(part, mine.numel(), 0)
    else:
        sample = mine.reshape(-1)[::SAMPLE_STRIDE]
        outcome.add(part, sample.numel(), max(1, int((sample != expected["sample"]).sum())))
        outcome.note = "mismatches counted on a 1-in-61 sample of the outputs"


def _float_outputs(recorded) -> torch.Tensor:
    """Float model outputs, stored as such or (compact) as the logits' integers and qparams."""
    if isinstance(recorded, torch.Tensor):
        return recorded
    return (recorded["int"].to(torch.float32) - recorded["zero_point"]) * torch.tensor(recorded["scale"],
                                                                                          dtype=torch.float32)


def replay_model(rec: dict, name: str, images: int | None = None) -> Outcome:
    from .. import data, pretrained

    recipe, cpu = rec["recipe"], profile_of(rec["cpu"])
    label = recipe["qconfig"]
    qconfig = get_default_qconfig("x86" if label.endswith("x86qconfig") else label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = ptq.quantized_skeleton(pretrained.load(recipe["checkpoint"], quantizable=True),
                                        packing_engine(recipe["engine"]), qconfig)
        qmodel.load_state_dict(rec["state_dict"])
    # The state dict is the recorded engine's (weights and qparams); the skeleton packed under another
    # engine where this torch lacks it only holds them: the what-if opt-in is the point here.
    interpreter = Interpreter(qmodel, engine=recipe["engine"], cpu=cpu, allow_other_engine=True)
    outcome = Outcome(name)
    for call in calls_of(rec, rec.get("tensors")):
        if isinstance(call.output, torch.Tensor) and call.output.is_quantized:
            _compare(outcome, "ops", interpreter.run_op(call).int_repr(), call.output.int_repr())
    with torch.inference_mode():
        y = interpreter(rec["x"])
    _compare(outcome, "model", y, _float_outputs(rec["y"]))
    outputs = rec.get("test_outputs")
    if outputs is not None:
        expected = _float_outputs(outputs["y"])
        n = len(expected) if images is None else min(images, len(expected))
        n -= n % outputs["batch_size"] if n >= outputs["batch_size"] else 0
        x = data.fashion_mnist("test").tensors()[0][:n]
        batch = outputs["batch_size"]
        with torch.inference_mode():
            for start in range(0, n, batch):
                _compare(outcome, "test images", interpreter(x[start:start + batch]), expected[start:start + batch])
    return outcome


def _input(spec: dict) -> torch.Tensor:
    xi = uint8_input(spec["seed"], spec["shape"])
    if spec.get("halved"):
        xi = xi // 2                                   # 0..127, as reduce_range activations
    if sha256(xi) != spec["sha256"]:
        raise RecordingError(f"regenerating the input from seed {spec['seed']} gave other bytes than recorded: "
                             "torch.randint differs on this machine, so this recording cannot be replayed here.")
    if spec.get("channels_last"):
        xi = xi.contiguous(memory_format=torch.channels_last)
    return torch._make_per_tensor_quantized_tensor(xi, spec["scale"], spec["zero_point"])


def _weight(spec: dict, layer_name: str) -> torch.Tensor:
    """The layer's weights, stored, or (compact form) regenerated from the recorder's seeds."""
    if "int" in spec["weight"]:
        return from_qdict(spec["weight"])
    case = layer_case(list(LAYERS).index(layer_name), spec["input"].get("halved", False),
                      spec["weight"]["per_channel"])
    if sha256(case["weight"].int_repr()) != spec["weight"]["sha256"] or not torch.equal(case["bias"], spec["bias"]):
        raise RecordingError(f"{layer_name}: regenerating the weights from their seed gave other values than "
                             "recorded, so this recording cannot be replayed here.")
    return case["weight"]


def replay_layers(rec: dict, name: str) -> Outcome:
    cpu, engine, outcome = profile_of(rec["cpu"]), rec["engine"], Outcome(name)
    ctx = layers.Context(engine, cpu)
    for layer_name, spec in rec["layers"].items():
        geo, relu = spec["geometry"], spec["relu"]
        with engines.engine_active(packing_engine(engine)):
            if spec["kind"] == "conv":
                cls = nniq.ConvReLU2d if relu else nnq.Conv2d
                module = cls(geo["in"], geo["out"], geo["k"], stride=geo["stride"], padding=geo["pad"],
                             groups=geo["groups"])
            else:
                module = (nniq.LinearReLU if relu else nnq.Linear)(geo["in"], geo["out"])
            module.set_weight_bias(_weight(spec, layer_name), spec["bias"])
        module.scale, module.zero_point = spec["out_scale"], spec["out_zero_point"]
        with torch.inference_mode():
            y = layer_for(module, layer_name, ctx)(_input(spec["input"]))
        _compare(outcome, "outputs", y.int_repr(), spec["output"])
    return outcome


def replay_adds(rec: dict, name: str) -> Outcome:
    cpu, engine, outcome = profile_of(rec["cpu"]), rec["engine"], Outcome(name)
    for entry in rec["adds"]:
        f = nnq.QFunctional()
        f.scale, f.zero_point = entry["out_scale"], entry["out_zero_point"]
        layer = layer_for(f, "add", layers.Context(engine, cpu.replace(threads=entry["threads"])))
        a, b = (_input({**entry[k], "shape": entry["shape"], "channels_last": entry["layout"] == "channels_last"})
                for k in ("a", "b"))
        with torch.inference_mode():
            c = (layer.add_relu if entry["relu"] else layer.add)(a, b)
        _compare(outcome, "outputs", c.int_repr(), entry["output"])
    return outcome


def replay_file(path: Path, images: int | None = None) -> Outcome:
    rec = load(path)
    name = Path(path).name
    if "recipe" in rec:
        return replay_model(rec, name, images)
    if "layers" in rec:
        return replay_layers(rec, name)
    if "adds" in rec:
        return replay_adds(rec, name)
    raise RecordingError(f"{path} is not a model, layers or adds recording.")


def replay(folder: Path, images: int | None = None, echo=print) -> list[Outcome]:
    outcomes = []
    for path in recording_files(folder):
        outcome = replay_file(path, images)
        echo(outcome.line())
        outcomes.append(outcome)
    exact = sum(o.exact for o in outcomes)
    echo(f"{exact}/{len(outcomes)} recordings exact")
    return outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of recordings (*.pt, *.pt.xz)")
    parser.add_argument("--images", type=int, default=None,
                        help="replay the recorded test-split outputs of at most this many images")
    args = parser.parse_args(argv)
    quiet_deprecations()
    try:
        outcomes = replay(args.folder, args.images, echo=lambda line: print(line, flush=True))
    except RecordingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if all(o.exact for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
