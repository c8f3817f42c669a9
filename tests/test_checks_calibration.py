"""Notebook 06's checkers accept the reference solutions and refuse the typical mistakes by name."""

import copy

import pytest
import torch
from torch.ao.quantization import (HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver, QConfig, convert,
                                   default_weight_observer, get_default_qconfig, prepare)
from torch.ao.quantization.observer import ObserverBase

from qlib import checks
from qlib.quiet import quiet_deprecations

quiet_deprecations()


def _unwritten(*args):
    raise NotImplementedError()


# --- exercise 1: the observers prepare() inserted ---------------------------------------------------


def list_observers(prepared):
    return {name: m for name, m in prepared.named_modules() if isinstance(m, ObserverBase)}


def test_observer_list_accepts_the_solution_and_a_list_of_names(capsys):
    assert checks.check_observer_list(list_observers)
    assert "Correct!" in capsys.readouterr().out
    assert checks.check_observer_list(lambda prepared: sorted(list_observers(prepared)))


def test_observer_list_refuses_histograms_only(capsys):
    def histograms_only(prepared):
        return {name: m for name, m in prepared.named_modules() if isinstance(m, HistogramObserver)}

    assert not checks.check_observer_list(histograms_only)
    out = capsys.readouterr().out
    assert "MinMaxObserver" in out and "ObserverBase" in out


def test_observer_list_refuses_the_observed_modules(capsys):
    def parents(prepared):
        return {name: m.activation_post_process for name, m in prepared.named_modules()
                if hasattr(m, "activation_post_process")}

    assert not checks.check_observer_list(parents)
    out = capsys.readouterr().out
    assert "carry an observer" in out and ".activation_post_process" in out


def test_observer_list_refuses_other_values_duplicates_and_stubs(capsys):
    assert not checks.check_observer_list(lambda p: {name: type(m).__name__ for name, m in list_observers(p).items()})
    assert "not the observer module" in capsys.readouterr().out
    assert not checks.check_observer_list(lambda p: list(list_observers(p)) * 2)
    assert "twice" in capsys.readouterr().out
    assert not checks.check_observer_list(lambda p: len(list_observers(p)))
    assert "dict" in capsys.readouterr().out
    assert not checks.check_observer_list(_unwritten)
    assert "not written yet" in capsys.readouterr().out


# --- exercise 2: a QConfig with per-tensor weights ---------------------------------------------------


def per_tensor_weights(qconfig):
    return QConfig(activation=qconfig.activation,
                   weight=MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric))


def test_per_tensor_qconfig_accepts_the_solution(capsys):
    assert checks.check_per_tensor_qconfig(per_tensor_weights)
    assert "Correct!" in capsys.readouterr().out


def test_per_tensor_qconfig_refuses_affine_weights(capsys):
    def affine(qconfig):
        return QConfig(activation=qconfig.activation, weight=MinMaxObserver.with_args(dtype=torch.qint8))

    assert not checks.check_per_tensor_qconfig(affine)
    out = capsys.readouterr().out
    assert "zero point" in out and "per_tensor_symmetric" in out


def test_per_tensor_qconfig_refuses_unsigned_weights_with_torchs_reason(capsys):
    def unsigned(qconfig):
        return QConfig(activation=qconfig.activation, weight=MinMaxObserver.with_args(qscheme=torch.per_tensor_symmetric))

    assert not checks.check_per_tensor_qconfig(unsigned)
    out = capsys.readouterr().out
    assert "failed" in out and "qint8" in out


def test_per_tensor_qconfig_refuses_a_new_activation_observer(capsys):
    def new_activations(qconfig):
        return per_tensor_weights(QConfig(activation=HistogramObserver, weight=qconfig.weight))

    assert not checks.check_per_tensor_qconfig(new_activations)
    assert "qconfig.activation" in capsys.readouterr().out


def test_per_tensor_qconfig_refuses_per_channel_the_ready_made_one_and_stubs(capsys):
    assert not checks.check_per_tensor_qconfig(lambda qconfig: qconfig)
    out = capsys.readouterr().out   # under qnnpack its default weight observer is the ready-made one
    assert "keeps its weight observer" in out or "ready-made" in out
    per_channel = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    assert not checks.check_per_tensor_qconfig(lambda qconfig: QConfig(qconfig.activation, per_channel))
    assert "per output channel" in capsys.readouterr().out
    assert not checks.check_per_tensor_qconfig(lambda qconfig: QConfig(qconfig.activation, default_weight_observer))
    assert "ready-made" in capsys.readouterr().out
    assert not checks.check_per_tensor_qconfig(lambda qconfig: "per_tensor")
    assert "not a QConfig" in capsys.readouterr().out
    assert not checks.check_per_tensor_qconfig(_unwritten)
    assert "not written yet" in capsys.readouterr().out


# --- exercise 3: prepare / calibrate / convert with torch's calls -------------------------------------


def quantize_by_hand(model, batches, engine, fuse=True, copy_first=True, set_engine=True, calibrate=True):
    model = copy.deepcopy(model) if copy_first else model
    model.eval()
    if fuse:
        model.fuse_model()
    model.qconfig = get_default_qconfig(engine)
    prepare(model, inplace=True)
    if calibrate:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    if set_engine:
        torch.backends.quantized.engine = engine
    return convert(model)


def test_ptq_recipe_accepts_the_solution(capsys):
    assert checks.check_ptq_recipe(quantize_by_hand)
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:must run observer before calling calculate_qparams")
@pytest.mark.parametrize("mistake, words", [
    (dict(copy_first=False), "changed the model"),
    (dict(set_engine=False), "torch.backends.quantized.engine"),
    (dict(fuse=False), "not fused"),
    (dict(calibrate=False), "scale, zero point"),
])
def test_ptq_recipe_refuses_the_typical_mistakes(capsys, mistake, words):
    assert not checks.check_ptq_recipe(lambda model, batches, engine: quantize_by_hand(model, batches, engine, **mistake))
    assert words in capsys.readouterr().out


def test_ptq_recipe_refuses_a_calibrated_model_a_stub_and_another_qconfig(capsys):
    def no_convert(model, batches, engine):
        model = copy.deepcopy(model).eval().fuse_model()
        model.qconfig = get_default_qconfig(engine)
        prepare(model, inplace=True)
        for batch in batches:
            model(batch)
        return model

    assert not checks.check_ptq_recipe(no_convert)
    assert "call convert" in capsys.readouterr().out
    assert not checks.check_ptq_recipe(_unwritten)
    assert "not written yet" in capsys.readouterr().out

    def forum_qconfig(model, batches, engine):
        model = copy.deepcopy(model).eval().fuse_model()
        model.qconfig = torch.ao.quantization.default_qconfig
        prepare(model, inplace=True)
        for batch in batches:
            model(batch)
        torch.backends.quantized.engine = engine
        return convert(model)

    assert not checks.check_ptq_recipe(forum_qconfig)
    assert "get_default_qconfig" in capsys.readouterr().out
