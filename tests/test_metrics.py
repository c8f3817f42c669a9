import pytest
import torch

from qlib.metrics import accuracy, confusion_matrix, predict
from qlib import sysinfo


def test_confusion_matrix_counts_true_by_predicted():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 2, 0, 2])
    expected = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert torch.equal(confusion_matrix(predictions, labels, 3), expected)
    assert accuracy(predictions, labels) == pytest.approx(100 * 4 / 6)


def test_accuracy_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        accuracy(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.zeros(0), torch.zeros(0))


def test_accuracy_is_an_exact_count():
    labels = torch.arange(10_000) % 10
    assert accuracy(torch.full_like(labels, 3), labels) == 10.0  # a float32 mean gives 10.000000149


def test_predict_batches_give_the_same_answer_as_one_batch():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    x = torch.randn(23, 5)
    assert torch.equal(predict(model, x, batch_size=4), model(x).argmax(1))


def test_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU\nflags\t\t: fpu avx2 fma avx512_vnni\n")
    flags = sysinfo.cpu_flags(cpuinfo)
    assert {"avx2", "avx512_vnni"} <= flags
    arm = tmp_path / "arm"
    arm.write_text("Features\t: fp asimd asimddp i8mm\n")
    assert {"asimd", "i8mm"} <= sysinfo.cpu_flags(arm)
    assert sysinfo.cpu_name(cpuinfo) == "Test CPU"
    assert sysinfo.cpu_flags(tmp_path / "missing") == set()


def test_evaluate_takes_a_model_or_any_callable_under_the_models_engine():
    from qlib import data, engines, int8, metrics, pretrained, ptq

    qmodel = ptq.quantize_static(pretrained.load("seednet-fmnist"), data.calibration_subset(64), engine="qnnpack",
                                 progress=False)
    images, labels = data.fashion_mnist("test").tensors()
    subset = (images[:300], labels[:300])
    torch.backends.quantized.engine = "x86"              # evaluate switches to the model's own engine
    assert metrics.evaluate(qmodel, subset, batch_size=128) == metrics.evaluate(int8.Interpreter(qmodel), subset)
    assert torch.backends.quantized.engine == "x86"      # and restores the previous one
    assert engines.engine_of(int8.Interpreter(qmodel)) is None
