"""qlib.bench: accuracy, latency and the FP32 vs INT8 table."""

import pandas as pd
import pytest
import torch
from torch import nn

from qlib import bench, engines, metrics, pretrained
from qlib.errors import BadInputError
from qlib.data import evaluation_subset, fashion_mnist


class _Constant(nn.Module):
    """Predicts class `k` for every image, and records the quantized engine it ran under."""

    def __init__(self, k=3):
        super().__init__()
        self.k, self.engines = k, []

    def forward(self, x):
        self.engines.append(torch.backends.quantized.engine)
        logits = torch.zeros(len(x), 10)
        logits[:, self.k] = 1
        return logits


def test_evaluate_counts_correct_predictions():
    images, labels = fashion_mnist("test").tensors()
    expected = 100.0 * (labels == 3).sum().item() / len(labels)
    assert metrics.evaluate(_Constant(3), fashion_mnist("test"), progress=False) == expected
    assert metrics.evaluate(_Constant(3), (images[:700], labels[:700]), batch_size=256, progress=False) == \
        100.0 * (labels[:700] == 3).sum().item() / 700


def test_subsets_and_loaders_give_the_same_images_as_items():
    subset = evaluation_subset(50, seed=1)
    images, labels = metrics.as_tensors(subset)
    for i in (0, 17, 49):
        image, label = subset[i]
        assert torch.equal(images[i], image) and labels[i] == label
    loader = torch.utils.data.DataLoader(subset, batch_size=16)
    from_loader = metrics.as_tensors(loader)
    assert torch.equal(from_loader[0], images) and torch.equal(from_loader[1], labels)
    with pytest.raises(BadInputError, match="images and labels"):
        metrics.as_tensors(42)


def test_a_model_runs_under_the_engine_it_was_converted_with():
    model = _Constant()
    model.qengine = "qnnpack"
    engines.use_engine("x86")
    metrics.evaluate(model, evaluation_subset(20), progress=False)
    bench.latency(model, batch_size=2, warmup=1, repeats=2)
    assert set(model.engines) == {"qnnpack"} and torch.backends.quantized.engine == "x86"


def test_latency_fixes_and_reports_threads_then_restores_them():
    before = torch.get_num_threads()
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    result = bench.latency(model, batch_size=4, warmup=1, repeats=5, num_threads=1)
    assert result.threads == 1 and result.repeats == 5 and result.batch_size == 4
    assert result.min_ms <= result.median_ms <= result.max_ms
    assert result.per_image_ms == result.median_ms / 4
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        bench.latency(model, repeats=0)


def test_ratios_are_against_the_same_models_fp32_row():
    table = pd.DataFrame([
        dict(model="a", precision="FP32", engine="-", accuracy=90.0, size_bytes=400, latency_b1_ms=2.0),
        dict(model="a", precision="INT8", engine="x86", accuracy=89.5, size_bytes=100, latency_b1_ms=1.0),
        dict(model="b", precision="FP32", engine="-", accuracy=80.0, size_bytes=1000, latency_b1_ms=4.0),
        dict(model="b", precision="INT8", engine="x86", accuracy=80.5, size_bytes=300, latency_b1_ms=3.0),
    ])
    out = bench.add_ratios(table, batch_sizes=(1,))
    assert out.size_ratio.tolist() == [1.0, 0.25, 1.0, 0.3]
    assert out.latency_b1_ratio.tolist() == [1.0, 0.5, 1.0, 0.75]
    assert out.accuracy_change.tolist() == [0.0, -0.5, 0.0, 0.5]
    text = bench.to_markdown(out, num_threads=1, calibration_images=2048)
    assert text.count("\n| a |") == 2 and "| 0.250 |" in text and "-0.50" in text


def test_the_script_writes_its_table(tmp_path, monkeypatch):
    real = bench.benchmark
    monkeypatch.setattr(bench, "benchmark", lambda **kw: real(
        names=("seednet-fmnist",), engines=["qnnpack"], calibration_images=128, batch_sizes=(1, 64),
        num_threads=kw["num_threads"], repeats=kw["repeats"], progress=False))
    output = tmp_path / "results.md"
    assert bench.main(["--output", str(output), "--repeats", "2", "--threads", "1"]) == 0
    text = output.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| seednet-fmnist")]
    assert len(rows) == 2 and "| FP32 |" in rows[0] and "| qnnpack |" in rows[1]
    fp32_accuracy = float(rows[0].split("|")[4])
    assert abs(fp32_accuracy - pretrained.read_manifest()["seednet-fmnist"]["test_accuracy"]) < 0.02
    assert "1 intra-op thread" in text
