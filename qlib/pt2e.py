"""PT2E, export-based static quantization with torchao: export, prepare, calibrate, convert, compile.

torch 2.14.1 no longer ships `torch.ao.quantization.quantize_pt2e`: the flow lives in torchao
(pinned here, `TORCHAO_VERSION`). It quantizes a graph captured by `torch.export`, not modules: a
quantizer (X86InductorQuantizer) annotates which tensors become int8, `prepare_pt2e` folds BatchNorm
and inserts observers, calibration runs as in eager mode, and `convert_pt2e` replaces each observer
by a quantize / dequantize pair whose scale and zero point are literal arguments in the graph. The
converted graph still computes in float32; `torch.compile` (Inductor, with freezing) fuses each
dequantize -> conv -> quantize into one oneDNN int8 kernel. The helpers below do the steps notebook
11 shows once by hand, and read the graph back: its qparams next to eager mode's, its int8 weights,
and the per-layer SQNR of torchao's numeric debugger.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import logging
import time
import warnings
import collections
from collections import defaultdict

import pandas as pd
import torch
from torch import fx, nn
from tqdm.auto import tqdm

from .errors import BadInputError, PipelineOrderError, QlibError, check_flag, check_whole, kind_of

TORCHAO_VERSION = "0.18.0"  # the pin of requirements.txt: the graph ops and their names are this version's
_QUANTIZE = "quantized_decomposed.quantize_per_tensor"
_DEQUANTIZE = "quantized_decomposed.dequantize_per_tensor"


class TorchaoMissingError(QlibError, ImportError):
    """torchao is not installed, or not the version the course pins."""


# --- torchao, imported once and quietly -------------------------------------------------------------

@contextlib.contextmanager
def _loggers_at_error(*names: str):
    """Raise these loggers to ERROR inside the block (known one-line notices, not warnings of ours)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def torchao_version() -> str | None:
    """The installed torchao's version, None when it is not installed."""
    try:
        return importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_torchao() -> str:
    """The installed torchao version if it is the pinned one, else an error saying how to install it.

    Importing torchao makes torch log one notice per enum it registers with torch.compile
    ("... is an Enum subclass and is now natively supported"); it says nothing about our code, so
    the import runs with that logger at ERROR.
    """
    version = torchao_version()
    if version != TORCHAO_VERSION:
        found = "is not installed" if version is None else f"is version {version}"
        raise TorchaoMissingError(f"torchao {found}, but PT2E quantization (notebook 11) is taught on torchao "
                                  f"{TORCHAO_VERSION}: its quantizer decides which tensors become int8 and names the "
                                  f"graph's ops. Install the pin: .venv/bin/pip install torchao=={TORCHAO_VERSION} "
                                  "(or make lab, once requirements.txt lists it).")
    with _loggers_at_error("torch.utils._pytree"):
        import torchao.quantization.pt2e  # noqa: F401
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  (registers its lowering)
    return version


check_torchao()  # at import: a missing or other torchao fails here, by name, not deep inside a step


# --- stages of a PT2E model -------------------------------------------------------------------------

def _observer_base():
    from torchao.quantization.pt2e import ObserverBase

    return ObserverBase


def pt2e_observers(model: nn.Module) -> dict[str, nn.Module]:
    """The observers prepare_pt2e inserted (activation_post_process_N modules), by name."""
    base = _observer_base()
    return {name: m for name, m in model.named_modules() if isinstance(m, base)}


def _targets(model: fx.GraphModule) -> list[str]:
    return [str(node.target) for node in model.graph.nodes if node.op == "call_function"]


def pt2e_stage(model) -> str:
    """'not exported' (an eager module), 'exported', 'prepared', 'calibrated' or 'converted'."""
    if not isinstance(model, fx.GraphModule):
        return "not exported"
    if any(t.startswith(_QUANTIZE) for t in _targets(model)):
        return "converted"
    found = pt2e_observers(model)
    if not found:
        return "exported"
    empty = [o for o in found.values() if isinstance(getattr(o, "min_val", None), torch.Tensor)
             and (o.min_val.numel() == 0 or not bool(torch.isfinite(o.min_val).all()))]
    return "prepared" if empty else "calibrated"


_FLOW = ("The PT2E order is export -> prepare -> calibrate -> convert: qlib.pt2e.quantize_pt2e(model, "
         "calibration_data) does all four.")


def _require_stage(model, wanted: tuple[str, ...], step: str):
    where = pt2e_stage(model)
    if where in wanted:
        return model
    if where == "not exported":
        raise PipelineOrderError(f"{step}() got {kind_of(model)}, not a graph captured by torch.export: PT2E "
                                 "quantizes a graph, not modules. Export it first with qlib.pt2e.export(model, "
                                 f"example) (torch.export.export(model, (x,)).module()). {_FLOW}")
    raise PipelineOrderError(f"{step}() needs a {' or '.join(wanted)} graph, and this one is {where}. {_FLOW}")


# --- export -----------------------------------------------------------------------------------------

def _check_example(example, what: str = "example") -> torch.Tensor:
    if not isinstance(example, torch.Tensor) or example.dtype != torch.float32 or example.dim() < 2:
        raise BadInputError(f"{what} must be a float32 batch of inputs (N, C, H, W), not {kind_of(example)}: "
                            "the model runs once on it (torch.export records the graph, torch.compile compiles "
                            "for its shape). Pass e.g. images[:2] of the data set.")
    return example


def export(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True) -> fx.GraphModule:
    """The graph of `model` in eval mode, captured by torch.export (`.module()` of the ExportedProgram).

    The batch dimension is exported as dynamic (`Dim("batch")`), so that calibration and evaluation
    may use other batch sizes than `example`'s; torch.export specialises sizes 0 and 1, so a
    one-image example is repeated to two. The model is copied and put in eval mode first: export
    records BatchNorm as it runs, and in training mode it would use each batch's statistics.
    """
    if not isinstance(model, nn.Module):
        raise BadInputError(f"model must be an nn.Module, not {kind_of(model)}. Pass the float model, e.g. "
                            "qlib.pretrained.load('resnet18-fmnist', quantizable=True).")
    if isinstance(model, fx.GraphModule) and pt2e_stage(model) != "exported":
        raise PipelineOrderError(f"export() got a graph that is already {pt2e_stage(model)}. Export the float "
                                 "model once; pass the result to prepare().")
    example = _check_example(example)
    check_flag(dynamic_batch, "dynamic_batch")
    if len(example) < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    float_copy = copy.deepcopy(model).eval()
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    return torch.export.export(float_copy, (example,), dynamic_shapes=shapes).module()


def reused_modules(exported: fx.GraphModule) -> dict[str, int]:
    """Modules the exported graph calls more than once, with their number of calls.

    torch.export names each call of a module in the nodes' `nn_module_stack`: a second call of
    the same ReLU gets the key `...relu@1`. X86InductorQuantizer groups nodes into partitions by
    the module path that made them (torch.fx's get_source_partitions, falling back on
    nn_module_stack after a non-strict export), so a ReLU used twice (torchvision's BasicBlock) is
    one partition with two outputs and prepare_pt2e fails ("Input partition has more than one
    output node").
    """
    if not isinstance(exported, fx.GraphModule):
        raise BadInputError(f"reused_modules reads an exported graph, not {kind_of(exported)}. Pass "
                            "qlib.pt2e.export(model, example).")
    calls: dict[str, set] = defaultdict(set)
    for node in exported.graph.nodes:
        for key, (path, _type) in (node.meta.get("nn_module_stack") or {}).items():
            calls[path].add(key)
    return {path: len(keys) for path, keys in calls.items() if len(keys) > 1}


# --- prepare, calibrate, convert --------------------------------------------------------------------

def x86_quantizer(reduce_range: bool = False):
    """X86InductorQuantizer with torchao's default static config for every op it knows.

    Activations: HistogramObserver, uint8 0..255 (0..127 with reduce_range, as eager x86's
    default qconfig); weights: PerChannelMinMaxObserver, int8 symmetric per output channel; both
    with eps = 2**-12.
    """
    check_flag(reduce_range, "reduce_range")
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(reduce_range=reduce_range))


def prepare(exported: fx.GraphModule, quantizer=None) -> fx.GraphModule:
    """prepare_pt2e(exported, quantizer): BatchNorm folded into the convolutions, observers inserted.

    `quantizer` defaults to x86_quantizer(). prepare_pt2e folds BatchNorm in the graph it is
    given (deep-copy it first to keep the float graph). A module called twice is refused first,
    with its name, since the quantizer's own error does not say which one.
    """
    _require_stage(exported, ("exported",), "prepare")
    reused = reused_modules(exported)
    if reused:
        listed = ", ".join(f"{path} ({count} calls)" for path, count in list(reused.items())[:4])
        raise BadInputError(f"The exported graph calls {len(reused)} module(s) more than once: {listed}. "
                            "X86InductorQuantizer groups the graph's nodes by the module path that made them, "
                            "so a module used twice (one ReLU module after each of two ops) is one group with "
                            "two outputs, and prepare_pt2e fails "
                            "('Input partition has more than one output node'). Give each use its own module "
                            "(load course models with quantizable=True) and export again.")
    quantizer = x86_quantizer() if quantizer is None else quantizer
    from torchao.quantization.pt2e.quantizer import Quantizer

    if not isinstance(quantizer, Quantizer):
        raise BadInputError(f"quantizer must be a torchao Quantizer, not {kind_of(quantizer)}. Pass e.g. "
                            "qlib.pt2e.x86_quantizer() or X86InductorQuantizer().set_global(config).")
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    return prepare_pt2e(exported, quantizer)


def calibrate(prepared: fx.GraphModule, calibration_data, num_batches: int | None = None,
              progress: bool = True) -> int:
    """Run calibration batches through a prepared graph (its observers record ranges); returns images seen.

    Takes what qlib.ptq.calibrate takes (a Dataset, a DataLoader, a list of batches) and checks each
    batch the same way (float32, a batch dimension, finite values).
    """
    from .ptq import _batch_source, _batches

    _require_stage(prepared, ("prepared", "calibrated"), "calibrate")
    if num_batches is not None:
        check_whole(num_batches, "num_batches", 1, example=8, why=" (or None to use every batch)")
    source = _batch_source(calibration_data)
    total = len(source) if hasattr(source, "__len__") else None
    if num_batches is not None:
        total = num_batches if total is None else min(total, num_batches)
    seen = 0
    with torch.no_grad():
        for x in tqdm(_batches(source, num_batches), total=total, desc="calibrating", unit="batch",
                      disable=not progress):
            try:
                prepared(x)
            except (RuntimeError, AssertionError) as error:
                raise BadInputError(f"A calibration batch of shape {tuple(x.shape)} does not fit the exported graph: "
                                    f"{str(error).splitlines()[0][:200]} Pass batches shaped like the example it "
                                    "was exported with (other batch sizes need export(..., dynamic_batch=True)).") \
                    from error
            seen += len(x)
    if seen == 0:
        raise BadInputError("The calibration data yielded no images: the observers saw nothing. Pass at least "
                            "one batch of images.")
    return seen


def make_evaluable(graph: fx.GraphModule) -> fx.GraphModule:
    """`graph` in eval mode, its `.eval()` / `.train()` made to work; returns it (changed in place).

    An exported graph refuses `.eval()` (NotImplementedError: "Calling eval() is not supported
    yet."), and qlib.metrics / qlib.bench call it. torchao's allow_exported_model_train_eval makes
    them switch the graph's dropout and BatchNorm ops instead (all that eval() could change), and
    move_exported_model_to_eval does it once now: the first switch rewrites the graph's code, which
    would make torch.compile compile a compiled graph again.
    """
    if not isinstance(graph, fx.GraphModule):
        raise BadInputError(f"make_evaluable takes an exported graph (torch.fx.GraphModule), not {kind_of(graph)}.")
    from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval

    return allow_exported_model_train_eval(move_exported_model_to_eval(graph))


def convert(prepared: fx.GraphModule) -> fx.GraphModule:
    """convert_pt2e of a calibrated graph, in eval mode and accepting `.eval()` (see make_evaluable)."""
    _require_stage(prepared, ("prepared", "calibrated"), "convert")
    if pt2e_stage(prepared) == "prepared":
        raise PipelineOrderError("convert() got a prepared graph whose observers have seen no data, so every "
                                 "scale would be meaningless. Call qlib.pt2e.calibrate(prepared, data) first.")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    return make_evaluable(convert_pt2e(prepared))


def quantize_pt2e(model: nn.Module, calibration_data, quantizer=None, example: torch.Tensor | None = None,
                  num_batches: int | None = None, progress: bool = True) -> fx.GraphModule:
    """The converted PT2E graph of float `model`: export, prepare, calibrate, convert.

    `quantizer` defaults to x86_quantizer() (X86InductorQuantizer, torchao's default config);
    `example` (what export runs once) to the first calibration batch. The float model is left
    untouched.
    """
    if example is None:
        from .ptq import _batch_source, _batches

        example = next(iter(_batches(_batch_source(calibration_data), 1)), None)
        if example is None:
            raise BadInputError("The calibration data yielded no images; pass at least one batch of images.")
    prepared = prepare(export(model, example), quantizer)
    calibrate(prepared, calibration_data, num_batches, progress)
    return convert(prepared)


# --- torch.compile ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_compile():
    """Inductor's known notices while it compiles: a CUDA build of torch on a machine without CUDA logs
    'No CUDA runtime is found', and its oneDNN lowering copies a tensor with torch.tensor(tensor)."""
    with _loggers_at_error("torch.utils.cpp_extension"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"To copy construct from a tensor", category=UserWarning)
        yield


def warm_up(compiled: nn.Module, examples, num_threads: int | None = 1) -> list[float]:
    """Call a torch.compile'd model once per example, so that each input shape compiles now; seconds each.

    Dynamo compiles lazily, on the first call with a new input shape, and again whenever a guard
    fails: another batch size (shapes are static here), torch.no_grad instead of inference_mode,
    another intra-op thread count. The examples run under inference_mode with `num_threads`
    threads (1, as qlib.bench.latency times models), so that later calls made the same way reuse
    the compiled code. Inductor's known notices while it compiles are silenced (see _quiet_compile).
    """
    from .bench import threads

    if isinstance(examples, torch.Tensor):
        examples = [examples]
    elif not isinstance(examples, (list, tuple)):
        raise BadInputError(f"examples must be a batch or a list of batches to compile for, not {kind_of(examples)}; "
                            "pass e.g. [images[:64], images[:1]].")
    if not examples:
        raise BadInputError("warm_up needs at least one example batch to compile for; pass e.g. [images[:64]].")
    for index, example in enumerate(examples):
        _check_example(example, f"examples[{index}]")
    if not callable(compiled):
        raise BadInputError(f"compiled must be the model torch.compile returned, not {kind_of(compiled)}.")
    seconds = []
    with _quiet_compile(), threads(num_threads), torch.inference_mode():
        for example in examples:
            start = time.perf_counter()
            compiled(example)
            seconds.append(time.perf_counter() - start)
    return seconds


def compile_int8(converted: fx.GraphModule, examples, num_threads: int | None = 1) -> tuple[nn.Module, list[float]]:
    """torch.compile(converted) with Inductor's freezing, compiled now for each example: (model, seconds).

    Freezing (torch._inductor.config.freezing = True, set globally since it must hold whenever a
    new input shape compiles) makes the weights constants, so that Inductor can pack them once and
    fuse dequantize -> conv -> quantize into oneDNN's int8 kernels (onednn::qconv_pointwise);
    without it the compiled graph still runs float convolutions. dynamic=False: with a dynamic
    batch, torch 2.14.1's int8 conv lowering fails a stride assertion, so each batch size compiles
    once. See warm_up for the seconds and the thread count.
    """
    _require_stage(converted, ("converted",), "compile_int8")
    make_evaluable(converted)  # qlib.metrics and qlib.bench call .eval(), which must not rewrite it later
    torch._inductor.config.freezing = True
    compiled = torch.compile(converted, dynamic=False)
    return compiled, warm_up(compiled, examples, num_threads)


_KINETO_NOISE = ("USDT:", "STAGE:", "gpuGetDeviceCount failed")


@contextlib.contextmanager
def _without_kineto_notices():
    """The profiler's C++ backend (kineto) writes start / stop lines to the process's stderr, and, in
    a CUDA build of torch without a GPU, an 'ERROR: gpuGetDeviceCount failed' line that is no error
    of ours. Catch file descriptor 2 inside the block and pass every other line on."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines()
                    if not any(noise in line for noise in _KINETO_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def profiled_ops(model, example: torch.Tensor, num_threads: int | None = 1) -> dict[str, int]:
    """{operator: calls} that torch's profiler sees in one forward pass (onednn::qconv_pointwise: 12),
    run as warm_up runs a compiled model (inference_mode, `num_threads` threads)."""
    from torch.profiler import ProfilerActivity, profile

    from .bench import threads

    _check_example(example)
    with _without_kineto_notices():
        with threads(num_threads), torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            model(example)
        calls = collections.Counter(event.name for event in prof.events())
    return dict(sorted(calls.items()))


# --- reading the converted graph --------------------------------------------------------------------

def module_path(node: fx.Node) -> str:
    """The module whose forward made `node` (from torch.export's nn_module_stack), '' at top level."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _op(node: fx.Node) -> str:
    if node.op == "placeholder":
        return "input"
    name = str(node.target)
    return name.split(".")[-2] if name.startswith(("aten.", "quantized_decomposed.")) else name


def qdq_nodes(converted: fx.GraphModule) -> pd.DataFrame:
    """Every per-tensor quantize / dequantize node of a converted graph, in graph order.

    Columns: node, op (quantize or dequantize), of (the node it reads), scale, zero_point,
    quant_min, quant_max, dtype: the literal arguments convert_pt2e wrote into the graph.
    """
    _require_stage(converted, ("converted",), "qdq_nodes")
    rows = []
    for node in converted.graph.nodes:
        target = str(node.target)
        if node.op == "call_function" and target.startswith((_QUANTIZE, _DEQUANTIZE)):
            source, scale, zero_point, qmin, qmax, dtype = node.args[:6]
            rows.append(dict(node=node.name, op="quantize" if target.startswith(_QUANTIZE) else "dequantize",
                             of=source.name, scale=float(scale), zero_point=int(zero_point), quant_min=qmin,
                             quant_max=qmax, dtype=str(dtype).replace("torch.", "")))
    return pd.DataFrame(rows)


def activation_qparams(converted: fx.GraphModule) -> pd.DataFrame:
    """One row per quantized activation: the tensor it quantizes and its scale / zero point.

    Columns: node (the quantize node), tensor (the node quantized), op (its aten op), module (the
    module that made it), scale, zero_point, quant_min, quant_max.
    """
    _require_stage(converted, ("converted",), "activation_qparams")
    nodes = {node.name: node for node in converted.graph.nodes}
    table = qdq_nodes(converted)
    table = table[table.op == "quantize"]
    rows = [dict(node=row.node, tensor=row.of, op=_op(nodes[row.of]), module=module_path(nodes[row.of]),
                 scale=row.scale, zero_point=row.zero_point, quant_min=row.quant_min, quant_max=row.quant_max)
            for row in table.itertuples()]
    return pd.DataFrame(rows)


_SAME_VALUES = ("dropout", "flatten", "view", "reshape", "contiguous", "clone")  # in eval mode


def _unary_source(node: fx.Node) -> fx.Node:
    """The op whose output `node` carries: back through ops that only reshape it or pass it on
    (eval-mode dropout, flatten), and through a ReLU, which eager mode fuses into the conv,
    linear or add before it (ConvReLU2d, LinearReLU, add_relu)."""
    while _op(node) in (*_SAME_VALUES, "relu", "relu_") and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _consumer_module(node: fx.Node) -> str:
    """The module of the first conv / linear that reads `node` (through its dequantize)."""
    pending = list(node.users)
    while pending:
        user = pending.pop(0)
        if _op(user) in ("conv2d", "linear"):
            return module_path(user)
        pending += list(user.users)
    return ""


def eager_counterpart(node: fx.Node, eager_modules: dict[str, str]) -> tuple[str, str]:
    """(eager module, 'out' or 'in'): where eager mode keeps the qparams of the tensor `node` makes.

    `eager_modules` maps each row of qlib.inspection.qparams_table (module path) to its type.
    The model input is QuantStub's output ('quant'); a conv or linear (+ReLU) output, also once
    flattened or passed through eval-mode dropout, is the fused layer's; an add (+ReLU) is the
    FloatFunctional's in the same block; anything else (a pooled tensor) has no observer of its own
    in eager mode: compare it with what its consumer receives.
    """
    if node.op == "placeholder":
        return "quant", "out"
    source = _unary_source(node)
    op, path = _op(source), module_path(source)
    if op in ("conv2d", "linear") and path in eager_modules:
        return path, "out"
    if op in ("add", "add_"):
        functionals = [name for name, kind in eager_modules.items()
                       if kind == "QFunctional" and name.rsplit(".", 1)[0] == path]
        if len(functionals) == 1:
            return functionals[0], "out"
    consumer = _consumer_module(node)
    return (consumer, "in") if consumer in eager_modules else ("", "")


def compare_with_eager(converted: fx.GraphModule, eager_table: pd.DataFrame) -> pd.DataFrame:
    """PT2E's activation qparams next to eager mode's for the same tensors, plus those only one flow has.

    `eager_table` is qlib.inspection.qparams_table(eager int8 model). Columns: tensor (PT2E node),
    eager (module, and ' (input)' when compared with what it receives), pt2e_scale, eager_scale,
    scale_ratio (pt2e / eager), pt2e_zero_point, eager_zero_point. Rows with an empty side are
    tensors the other flow does not quantize.
    """
    if not isinstance(eager_table, pd.DataFrame) or "out_scale" not in eager_table.columns:
        raise BadInputError(f"eager_table must be qlib.inspection.qparams_table(eager_int8_model), not "
                            f"{kind_of(eager_table)}.")
    ours = activation_qparams(converted)
    nodes = {node.name: node for node in converted.graph.nodes}
    kinds = eager_table["type"].to_dict()
    rows, used = [], set()
    for row in ours.itertuples():
        module, side = eager_counterpart(nodes[row.tensor], kinds)
        eager_scale = eager_zp = None
        if module:
            used.add((module, side))
            eager_scale = eager_table.loc[module, f"{side}_scale"]
            eager_zp = eager_table.loc[module, f"{side}_zero_point"]
        rows.append(dict(tensor=row.tensor, op=row.op, eager=module + (" (input)" if side == "in" else ""),
                         pt2e_scale=row.scale, eager_scale=None if eager_scale is None else float(eager_scale),
                         pt2e_zero_point=row.zero_point,
                         eager_zero_point=None if eager_zp is None else int(eager_zp)))
    for module, row in eager_table.iterrows():
        if (module, "out") not in used and pd.notna(row.get("out_scale")):
            rows.append(dict(tensor=None, op=None, eager=module, pt2e_scale=None, eager_scale=float(row.out_scale),
                             pt2e_zero_point=None, eager_zero_point=int(row.out_zero_point)))
    table = pd.DataFrame(rows)
    table["scale_ratio"] = table.pt2e_scale / table.eager_scale
    for column in ("pt2e_zero_point", "eager_zero_point"):
        table[column] = table[column].astype("Int64")
    return table[["tensor", "op", "eager", "pt2e_scale", "eager_scale", "scale_ratio", "pt2e_zero_point",
                  "eager_zero_point"]]


def _attribute(model: nn.Module, target: str):
    """What a get_attr node reads: model.a.b for target 'a.b'."""
    value = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def int8_weights(converted: fx.GraphModule) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module path: (int8 weight, per-channel scales)} of each conv / linear of a converted graph.

    convert_pt2e folds each weight's quantize into a constant (an int8 tensor attribute); the
    graph dequantizes it with dequantize_per_channel right before the conv / linear that uses it.
    """
    _require_stage(converted, ("converted",), "int8_weights")
    found = {}
    for node in converted.graph.nodes:
        if _op(node) not in ("conv2d", "linear"):
            continue
        weight = node.args[1]
        if isinstance(weight, fx.Node) and "dequantize_per_channel" in str(weight.target):
            int8, scales = (_attribute(converted, a.target) for a in weight.args[:2])
            found[module_path(node)] = (int8, scales)
    return found


def compare_weights(converted: fx.GraphModule, eager_qmodel: nn.Module) -> pd.DataFrame:
    """Per conv / linear: are PT2E's int8 weights and scales those of the eager int8 model, bit for bit?"""
    from .inspection import is_quantized_module

    if not isinstance(eager_qmodel, nn.Module):
        raise BadInputError(f"eager_qmodel must be the eager int8 model (qlib.ptq.quantize_static), not "
                            f"{kind_of(eager_qmodel)}.")
    rows = []
    for path, (int8, scales) in int8_weights(converted).items():
        try:
            module = eager_qmodel.get_submodule(path)
        except AttributeError:
            module = None
        if module is None or not is_quantized_module(module):
            rows.append(dict(module=path, values=int8.numel(), equal_values=None, differing_values=None,
                             equal_scales=None))
            continue
        weight = module.weight()
        same_shape = weight.shape == int8.shape
        equal = int((weight.int_repr() == int8).sum()) if same_shape else 0
        per_channel = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        equal_scales = (same_shape and per_channel
                        and torch.equal(weight.q_per_channel_scales().float(), scales.float()))
        rows.append(dict(module=path, values=int8.numel(), equal_values=equal, differing_values=int8.numel() - equal,
                         equal_scales=bool(equal_scales)))
    return pd.DataFrame(rows).set_index("module")


# --- the numeric debugger ---------------------------------------------------------------------------

_BATCH_NORMS = ("batch_norm", "_native_batch_norm_legit_no_training")


def _logged_source(node: fx.Node) -> fx.Node:
    """`node`, or the op it logs when it is an OutputLogger call."""
    return node.args[0] if node.op == "call_module" and isinstance(node.args[0], fx.Node) else node


def _folded_into(reference: fx.GraphModule, name: str) -> str | None:
    """The BatchNorm node that follows conv `name` in the reference graph (prepare_pt2e folds it in)."""
    nodes = {node.name: node for node in reference.graph.nodes}
    node = nodes.get(name)
    if node is None or _op(node) != "conv2d":
        return None
    for user in node.users:
        for candidate in [user, *user.users]:
            if candidate.op == "call_function" and _op(candidate) in _BATCH_NORMS:
                return candidate.name
    return None


def sqnr_table(reference: fx.GraphModule, quantized: fx.GraphModule) -> pd.DataFrame:
    """Per-node SQNR from torchao's numeric debugger, and the same against what each node now computes.

    Both graphs come from prepare_for_propagation_comparison and have run the same inputs. torchao
    pairs nodes by origin: a conv of the converted graph is paired with the reference's conv, but
    prepare_pt2e folded the BatchNorm into it, so it now computes conv+BN; the sqnr_db column
    compares it with the reference's BatchNorm output instead (qlib.qmath.sqnr_db: reference
    energy over error energy). Columns: node, op, module, torchao_sqnr_db, compared_with, sqnr_db.
    """
    from torchao.quantization.pt2e import compare_results, extract_results_from_loggers

    from .qmath import sqnr_db

    for graph, what in ((reference, "reference"), (quantized, "quantized")):
        if not isinstance(graph, fx.GraphModule):
            raise BadInputError(f"{what} must be a graph from prepare_for_propagation_comparison, not "
                                f"{kind_of(graph)}.")
    ref_results, q_results = extract_results_from_loggers(reference), extract_results_from_loggers(quantized)
    if not ref_results or not q_results:
        raise PipelineOrderError("The loggers hold no outputs: run the same input through both graphs returned by "
                                 "prepare_for_propagation_comparison before reading them.")
    by_name = {info.name: stats for info, (_name, _stack, stats) in ref_results.items()}
    q_nodes = {node.name: node for node in quantized.graph.nodes}
    rows = []
    for info, summary in compare_results(ref_results, q_results).items():
        actual = q_results[info][2]
        folded = _folded_into(reference, info.name)
        compared = folded if folded in by_name else info.name
        node = q_nodes.get(summary.actual_node_name)
        rows.append(dict(node=info.name, op=_op(_logged_source(node)) if node is not None else "",
                         module=summary.ref_module_stack,
                         torchao_sqnr_db=float(sum(float(r.sqnr) for r in summary.results) / len(summary.results)),
                         compared_with=compared,
                         sqnr_db=sqnr_db(torch.cat([t.flatten() for t in by_name[compared]]),
                                         torch.cat([t.flatten() for t in actual]))))
    return pd.DataFrame(rows)
