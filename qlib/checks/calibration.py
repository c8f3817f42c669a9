"""Notebook 06: what prepare() inserts, a QConfig of one's own, and prepare / calibrate / convert
written with torch's calls.

Each checker builds its own small models (SeedNet, a narrow quantizable ResNet) under the course's
engine, so that a learner's answer is judged on models it has not seen, and compares with what
torch (or qlib.ptq, which calls the same torch functions) produces: names, observer objects,
scales, zero points and int8 weights, exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .core import _NotYet, _call_learner, _checker, _describe, _exception_text, report

_OBSERVER_HINT = ("walk prepared.named_modules() and keep the modules that are observers: "
                  "isinstance(module, torch.ao.quantization.observer.ObserverBase).")


# --- models the checkers quantize ---------------------------------------------------------------------


def _engine() -> str:
    from ..engines import course_engine

    return course_engine()


def _seednet(trained: bool = True) -> nn.Module:
    """The forum's CNN: the committed checkpoint when `trained`, else seeded random weights."""
    from .. import models, pretrained

    if trained:
        return pretrained.load("seednet-fmnist")
    torch.manual_seed(0)
    return models.SeedNet().eval()


def _small_resnet() -> nn.Module:
    """A narrow quantizable ResNet-18 (random weights): FloatFunctional adds carry observers too."""
    from ..models import resnet18

    torch.manual_seed(0)
    return resnet18(num_classes=10, in_channels=1, width=4, small_input=True, quantizable=True).eval()


def _calibration_batches(seed: int = 0) -> list[torch.Tensor]:
    """Two batches of image-like inputs (seeded): what the observers see in every checker."""
    generator = torch.Generator().manual_seed(seed)
    return list((torch.randn(96, 1, 28, 28, generator=generator) * 0.8 + 0.3).split(48))


def _prepared_cases(engine: str) -> list[tuple[str, nn.Module]]:
    """Prepared models whose observers a learner's function must list: SeedNet with a MinMax
    classifier (not every observer is a Histogram), and a small ResNet with FloatFunctional adds."""
    from torch.ao.quantization import MinMaxObserver, QConfig, get_default_qconfig, prepare

    from ..quiet import quiet_deprecations

    quiet_deprecations()
    default = get_default_qconfig(engine)
    cases = []
    seednet = _seednet(trained=False)
    seednet.fuse_model()
    seednet.qconfig = default
    reduce_range = default.activation().reduce_range
    seednet.classifier.qconfig = QConfig(activation=MinMaxObserver.with_args(reduce_range=reduce_range),
                                         weight=default.weight)
    cases.append(("SeedNet with a MinMax-observed classifier", prepare(seednet)))
    resnet = _small_resnet()
    resnet.fuse_model()
    resnet.qconfig = default
    cases.append(("a small quantizable ResNet-18", prepare(resnet)))
    return cases


# --- exercise 1: the observers prepare() inserted ---------------------------------------------------


def _read_observer_names(got, truth: dict, label: str) -> set[str]:
    """The names in the learner's answer: a dict name -> observer (each value the module itself), or
    a list / tuple / set of names."""
    subject = f"on {label}, your function returned"
    if isinstance(got, dict):
        names = list(got)
        for name in names:
            if not isinstance(name, str):
                raise _NotYet(f"{subject} a dict with the key {_describe(name)}; the keys should be the "
                              "observers' names, as prepared.named_modules() gives them.")
        for name, value in got.items():
            if name in truth and value is not truth[name]:
                raise _NotYet(f"{subject} {_describe(value)} under {name!r}, not the observer module at that "
                              "name.", "map each name to the module itself: {name: module for name, module "
                              "in prepared.named_modules() if ...}.")
    elif isinstance(got, (list, tuple, set, frozenset)):
        names = list(got)
        for name in names:
            if not isinstance(name, str):
                raise _NotYet(f"{subject} a collection holding {_describe(name)}; expected the observers' "
                              "names (strings), or a dict name -> observer.")
    else:
        raise _NotYet(f"{subject} {_describe(got)}; expected a dict mapping each observer's name to the "
                      "observer module.", _OBSERVER_HINT)
    if len(set(names)) != len(names):
        raise _NotYet(f"{subject} some names twice; each observer is one module under one name.")
    return set(names)


def _missing_hint(missing: list[str], truth: dict, got: set[str]) -> str:
    """Why a learner's list lacks these observers: the usual causes, most specific first."""
    from torch.ao.quantization import HistogramObserver

    kinds = {type(truth[name]).__name__ for name in missing}
    if not any(isinstance(truth[name], HistogramObserver) for name in missing) and any(
            isinstance(truth[name], HistogramObserver) for name in got if name in truth):
        return (f"the missing ones are {', '.join(sorted(kinds))}s: not every observer is a HistogramObserver "
                "(a qconfig can be set per module). Test for the base class of them all, ObserverBase.")
    if any(".skip_add." in name or name.endswith("skip_add.activation_post_process") for name in missing):
        return ("a FloatFunctional (the ResNet's skip_add) gets an observer too, as its child "
                "activation_post_process: keep every observer, whatever its parent.")
    return _OBSERVER_HINT


@_checker("fn: your function fn(prepared), returning a dict {name: observer} of the observers prepare() inserted")
def check_observer_list(fn) -> bool:
    """Does fn(prepared) name exactly the observers torch's prepare() inserted (a dict name ->
    observer module, as named_modules() names them; a list of the names is read too)?

    Judged on models the learner has not seen, under the course's engine: SeedNet whose classifier
    has a MinMax qconfig, and a small ResNet whose FloatFunctional adds carry observers.
    """
    from ..stages import observers

    found = []
    for label, prepared in _prepared_cases(_engine()):
        truth = observers(prepared)
        got = _read_observer_names(_call_learner(fn, prepared), truth, label)
        extra, missing = sorted(got - set(truth)), sorted(set(truth) - got)
        parents = [name for name in extra if f"{name}.activation_post_process" in missing]
        if parents:
            return report(False, "", f"on {label}, you returned {len(parents)} module(s) that carry an observer, "
                          f"e.g. {parents[0]!r}, instead of the observers themselves.",
                          f"the observer is the child module {parents[0] + '.activation_post_process'!r} (an "
                          "ObserverBase); return the observers.")
        if extra:
            modules, example = dict(prepared.named_modules()), next((name for name in extra if name), extra[0])
            what = (f"a {type(modules[example]).__name__}" if example in modules else "no module of the model")
            return report(False, "", f"on {label}, {len(extra)} of your names are not observers, e.g. "
                          f"{example!r} ({what}).", _OBSERVER_HINT)
        if missing:
            return report(False, "", f"on {label}, you found {len(got)} of the {len(truth)} observers; missing "
                          f"e.g. {missing[0]!r} (a {type(truth[missing[0]]).__name__}).",
                          _missing_hint(missing, truth, got))
        found.append(f"{len(truth)} in {label}")
    return report(True, f"you listed every observer prepare() inserted: {'; '.join(found)}.")


# --- exercise 2: a QConfig with per-tensor weights ---------------------------------------------------


def _converted(model: nn.Module, qconfig, engine: str, whose: str) -> nn.Module:
    """`model` quantized with `qconfig` under `engine` (qlib.ptq: torch's prepare / convert), or a
    refusal quoting torch's error when the qconfig cannot be used."""
    from .. import ptq

    try:
        return ptq.quantize_static(model, _calibration_batches(), engine, progress=False, qconfig=qconfig)
    except Exception as exc:
        hint = ("weights are signed 8-bit integers: pass dtype=torch.qint8 to the weight observer."
                if "qint8" in str(exc) else "prepare, calibrate and convert must accept it, as with torch's own "
                "qconfigs (observer factories made with .with_args(...), not observer instances).")
        raise _NotYet(f"quantizing SeedNet with {whose} failed: {_exception_text(exc)}", hint) from None


def _layers_with_weights(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if callable(getattr(m, "weight", None))
            and not isinstance(getattr(m, "weight"), (torch.Tensor, nn.Parameter))}


def _output_qparams(model: nn.Module) -> dict[str, tuple[float, int]]:
    """Every converted module's output (scale, zero point), the input's Quantize included."""
    found = {}
    for name, m in model.named_modules():
        scale, zero_point = getattr(m, "scale", None), getattr(m, "zero_point", None)
        if scale is not None and zero_point is not None:
            found[name] = (float(torch.as_tensor(scale).flatten()[0]), int(torch.as_tensor(zero_point).flatten()[0]))
    return found


def _compare_weights(got: nn.Module, expected: nn.Module, per_tensor_wanted: bool) -> None:
    """Refuse, naming the first layer whose int8 weight differs in qscheme, zero point, scale or integers."""
    per_channel = (torch.per_channel_affine, torch.per_channel_symmetric)
    for name, layer in _layers_with_weights(expected).items():
        want, have = layer.weight(), got.get_submodule(name).weight()
        if have.dtype != want.dtype:
            raise _NotYet(f"{name}'s weight is {have.dtype}, not {want.dtype}.", "weights are signed 8-bit: "
                          "dtype=torch.qint8.")
        if have.qscheme() in per_channel and want.qscheme() not in per_channel:
            raise _NotYet(f"{name}'s weight still has one scale per output channel ({have.qscheme()}).",
                          "a per-tensor weight observer (MinMaxObserver) gives one scale for the whole tensor."
                          if per_tensor_wanted else "use the same weight observer as torch's.")
        if have.qscheme() not in per_channel and want.qscheme() in per_channel:
            raise _NotYet(f"{name}'s weight has one scale for the whole tensor ({have.qscheme()}), not one per "
                          "output channel.")
        if have.qscheme() in per_channel:
            scales, zero_points = have.q_per_channel_scales(), have.q_per_channel_zero_points()
            want_scales, want_zero_points = want.q_per_channel_scales(), want.q_per_channel_zero_points()
        else:
            scales, zero_points = torch.tensor([have.q_scale()]), torch.tensor([have.q_zero_point()])
            want_scales, want_zero_points = torch.tensor([want.q_scale()]), torch.tensor([want.q_zero_point()])
        if not torch.equal(zero_points.long(), want_zero_points.long()):
            raise _NotYet(f"{name}'s weight zero point is {int(zero_points.flatten()[0])}, not "
                          f"{int(want_zero_points.flatten()[0])}.", "symmetric weights keep 0.0 at the integer 0 "
                          "(qscheme=torch.per_tensor_symmetric).")
        if not torch.equal(scales.double(), want_scales.double()):
            raise _NotYet(f"{name}'s weight scale is {float(scales.flatten()[0]):.8g}, torch's "
                          f"default_weight_observer gives {float(want_scales.flatten()[0]):.8g}.",
                          "weights use the whole range -128..127 (reduce_range=False, MinMaxObserver's default).")
        if not torch.equal(have.int_repr(), want.int_repr()):
            wrong = int((have.int_repr() != want.int_repr()).sum())
            raise _NotYet(f"{name}: {wrong} int8 weights differ from torch's.", "use MinMaxObserver, whose "
                          "range is the weight's own min and max.")


@_checker("fn: your function fn(qconfig), returning a torch.ao.quantization.QConfig")
def check_per_tensor_qconfig(fn) -> bool:
    """Does fn(qconfig) return a QConfig that keeps qconfig's activation observer and observes
    weights per tensor, symmetric, int8, as torch's default_weight_observer does? Judged by what it
    produces: SeedNet quantized with it (course engine) has the same activation scales and zero
    points as with qconfig, and the same per-tensor int8 weights, scales and zero points as with
    default_weight_observer. Handing back torch's ready-made default_weight_observer is refused:
    the exercise is to build it.
    """
    from torch.ao.quantization import (MinMaxObserver, QConfig, default_per_channel_weight_observer,
                                       default_weight_observer, get_default_qconfig)

    engine = _engine()
    default = get_default_qconfig(engine)
    bases = [(f"{engine}'s default qconfig", default),
             ("a qconfig with MinMax activations (reduce_range=True) and per-channel weights",
              QConfig(activation=MinMaxObserver.with_args(reduce_range=True),
                      weight=default_per_channel_weight_observer))]
    model = _seednet()
    for label, base in bases:
        got = _call_learner(fn, base)
        if not isinstance(got, QConfig):
            raise _NotYet(f"given {label}, your function returned {_describe(got)}, not a QConfig.",
                          "return QConfig(activation=..., weight=...).")
        if got.weight is default_weight_observer:
            raise _NotYet("your weight observer is torch's ready-made default_weight_observer.",
                          "build it yourself from MinMaxObserver.with_args(...): which dtype, which qscheme?")
        if got.weight is base.weight:
            raise _NotYet(f"given {label}, your QConfig keeps its weight observer as it is.",
                          "replace the weight observer with a per-tensor one built from MinMaxObserver.with_args(...).")
        if got.activation is default_weight_observer or got.weight is base.activation:
            raise _NotYet(f"given {label}, your QConfig mixes up its two roles.",
                          "QConfig(activation=<observer of the outputs>, weight=<observer of the weights>).")
        expected = _converted(model, QConfig(activation=base.activation, weight=default_weight_observer), engine,
                              "torch's observers")
        produced = _converted(model, got, engine, "your QConfig")
        _compare_weights(produced, expected, per_tensor_wanted=True)
        want, have = _output_qparams(expected), _output_qparams(produced)
        for name, qparams in want.items():
            if have.get(name) != qparams:
                raise _NotYet(f"given {label}, {name}'s output scale / zero point is {have.get(name)}, not "
                              f"{qparams}: your QConfig changed how activations are observed.",
                              "keep the given qconfig's activation observer as it is (qconfig.activation): "
                              "only the weights change.")
    return report(True, "your QConfig keeps the activations' observer and gives every layer one symmetric int8 "
                  "scale per weight tensor, the same integers as torch's default_weight_observer.")


# --- exercise 3: prepare / calibrate / convert with torch's calls -------------------------------------


def _snapshot(model: nn.Module) -> tuple[dict, dict]:
    return ({name: type(m) for name, m in model.named_modules()},
            {key: value.detach().clone() for key, value in model.state_dict().items()})


def _unchanged(model: nn.Module, snapshot: tuple[dict, dict]) -> bool:
    types, state = _snapshot(model)
    return types == snapshot[0] and state.keys() == snapshot[1].keys() and all(
        torch.equal(state[key], snapshot[1][key]) for key in state)


def _first_structure_difference(got: nn.Module, expected: nn.Module) -> tuple[str, str] | None:
    """(problem, hint) for the first module whose type differs, None when the trees match."""
    have = {name: type(m) for name, m in got.named_modules()}
    for name, module in expected.named_modules():
        kind = type(module)
        if have.get(name) is kind:
            continue
        where = name or "the model"
        if name not in have:
            return f"{where} is missing from your model (torch's has a {kind.__name__}).", "start from a copy of the model."
        found = have[name].__name__
        if "ReLU" in kind.__name__ and "ReLU" not in found or found.endswith("BatchNorm2d"):
            return (f"{where} is a {found}, torch's a {kind.__name__}: your model was not fused.",
                    "call fuse_model() on the copy (in eval mode) before prepare.")
        return (f"{where} is a {found}, torch's a {kind.__name__}.",
                "prepare, calibrate, then convert; in that order, each once.")
    return None


def _compare_recipe(got: nn.Module, expected: nn.Module, engine: str, probe: torch.Tensor) -> None:
    from ..engines import engine_active
    from ..stages import stage

    if not isinstance(got, nn.Module):
        raise _NotYet(f"your function returned {_describe(got)}, not a model.", "return the converted model.")
    where = stage(got)
    if where != "converted":
        step = {"float": "a float model: prepare, calibrate and convert a copy",
                "prepared": "a prepared model whose observers saw no data: calibrate it, then convert it",
                "calibrated": "a calibrated model that was not converted: call convert on it"}[where]
        raise _NotYet(f"your function returned {step}.", "torch.ao.quantization.convert(prepared) returns the int8 model.")
    if got.training:
        raise _NotYet("your converted model is in training mode.", "work in eval mode throughout (model.eval() "
                      "on the copy, before fusing).")
    difference = _first_structure_difference(got, expected)
    if difference:
        raise _NotYet(*difference)
    want, have = _output_qparams(expected), _output_qparams(got)
    for name, qparams in want.items():
        if have.get(name) != qparams:
            raise _NotYet(f"{name or 'the model'}'s output (scale, zero point) is {have.get(name)}, torch's "
                          f"{qparams}: the observers saw other data, or others were used.",
                          f"use get_default_qconfig({engine!r}) and feed every calibration batch once, in eval mode.")
    _compare_weights(got, expected, per_tensor_wanted=False)
    with engine_active(engine), torch.inference_mode():
        have_out, want_out = got(probe), expected(probe)
    if not torch.equal(have_out, want_out):
        raise _NotYet(f"your model's scales, zero points and int8 weights are right, but its outputs differ from "
                      f"torch's on {int((have_out != want_out).sum())} of {want_out.numel()} logits under {engine}.",
                      "convert packs the weights for torch's active engine: set torch.backends.quantized.engine = "
                      "engine before convert.")


@_checker("fn: your function fn(model, batches, engine), returning the converted int8 model")
def check_ptq_recipe(fn) -> bool:
    """Does fn(model, batches, engine) give what qlib.ptq.quantize_static gives: the same modules,
    every output scale and zero point, the same int8 weights and scales, and bit-identical outputs
    under `engine`, leaving `model` untouched? Judged on SeedNet under the course's engine, with
    another engine active when fn is called (convert packs weights for the active engine).
    """
    from .. import ptq
    from ..engines import available_engines, engine_active

    engine = _engine()
    model = _seednet()
    given, snapshot = copy.deepcopy(model), _snapshot(model)
    batches = _calibration_batches()
    other = next((e for e in ("qnnpack", "x86", "fbgemm", "onednn") if e != engine and e in available_engines()), None)
    with engine_active(other):
        got = _call_learner(fn, given, [b.clone() for b in batches], engine)
    if not _unchanged(given, snapshot):
        raise _NotYet("your function changed the model it was given (fuse_model and prepare work in place).",
                      "work on a copy: copy.deepcopy(model).")
    expected = ptq.quantize_static(model, batches, engine, progress=False)
    _compare_recipe(got, expected, engine, _calibration_batches(seed=1)[0])
    return report(True, f"your prepare / calibrate / convert gives qlib.ptq's int8 SeedNet under {engine} bit for bit: "
                  "the same modules, scales, zero points, int8 weights and outputs, and the float model untouched.")
