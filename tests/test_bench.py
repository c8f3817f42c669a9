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


def test_the_script_writes_tables_and_figures_to_an_untracked_folder(tmp_path, monkeypatch, capsys):
    real = bench.measure
    monkeypatch.setattr(bench, "measure", lambda *args, **kw: real(
        ("seednet-fmnist",), ["qnnpack"], 128, (1, 64), (1, 2), repeats=2, rounds=1, progress=False, test_images=10_000))
    output = tmp_path / "bench"
    assert bench.main(["--output-dir", str(output)]) == 0
    text = (output / "results.md").read_text()
    assert "## Latency grid" in text
    summary = [line for line in text.split("## Latency grid")[0].splitlines() if line.startswith("| seednet-fmnist")]
    assert len(summary) == 2 and "| FP32 |" in summary[0] and "| qnnpack |" in summary[1]
    fp32_accuracy = float(summary[0].split("|")[4])
    assert abs(fp32_accuracy - pretrained.read_manifest()["seednet-fmnist"]["test_accuracy"]) < 0.02
    grid = pd.read_csv(output / "latency.csv")
    assert sorted(set(zip(grid.variant, grid.threads, grid.batch_size))) == sorted(
        (v, t, b) for v in ("FP32", "INT8 qnnpack") for t in (1, 2) for b in (1, 64))
    assert (grid[grid.variant == "FP32"].ratio_to_fp32 == 1).all()
    for name in ("latency-seednet-fmnist.png", "size.png", "accuracy.png", "results.csv"):
        assert (output / name).stat().st_size > 0
    assert f"written to {output}" in capsys.readouterr().out
    # the default folder is build/bench, which git ignores
    assert bench.OUTPUT_DIR.relative_to(bench.REPO_ROOT).parts[:2] == ("build", "bench")


def test_the_default_output_folder_is_ignored_by_git():
    import subprocess

    probe = bench.OUTPUT_DIR / "results.md"
    result = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=bench.REPO_ROOT)
    if result.returncode == 128:
        pytest.skip("not a git checkout")
    assert result.returncode == 0


def test_latency_grid_times_every_cell_with_its_median_and_spread():
    models = {"a": nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), "b": nn.Sequential(nn.Flatten(), nn.Linear(784, 3))}
    grid = bench.latency_grid(models, batch_sizes=(1, 4), thread_counts=(1, 1), repeats=2, rounds=2, progress=False)
    assert len(grid) == 4 and set(grid.threads) == {1}           # a repeated thread count is one cell
    assert grid.variant.tolist() == ["a", "a", "b", "b"] and grid.batch_size.tolist() == [1, 4, 1, 4]
    assert (grid.latency_ms > 0).all() and (grid.per_image_ms == grid.median_ms / grid.batch_size).all()
    assert ((grid.low_ms <= grid.median_ms) & (grid.median_ms <= grid.high_ms) & (grid.latency_ms <= grid.low_ms)).all()
    assert set(grid.engine) == {"-"}
    with pytest.raises(ValueError):
        bench.latency_grid(models, rounds=0, progress=False)


def test_op_categories_sort_float_and_int8_ops():
    assert bench.op_category("quantized::conv2d_relu") == bench.op_category("aten::mkldnn_convolution") == "conv / linear"
    assert bench.op_category("quantized::linear") == bench.op_category("aten::addmm") == "conv / linear"
    assert bench.op_category("aten::quantize_per_tensor") == bench.op_category("aten::dequantize") == "quantize / dequantize"
    assert bench.op_category("quantized::add_relu") == bench.op_category("aten::add") == "add"
    assert bench.op_category("quantized::batch_norm2d") == "batch norm"
    assert bench.op_category("aten::_empty_affine_quantized") == "other"


def test_op_times_counts_each_op_once_per_pass():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    ops = bench.op_times(model, batch_size=2, repeats=3)
    assert ops.loc[ops.op == "aten::conv2d", "calls"].item() == 1 and ops.loc[ops.op == "aten::linear", "calls"].item() == 1
    shares = bench.time_shares({"float": ops})
    assert shares.loc["conv / linear", "float"] > 0 and abs(shares["float"].sum() - ops.self_ms.sum()) < 1e-9


def test_conv_call_us_times_float_and_each_engines_conv():
    assert bench.conv_call_us(None, repeats=3, rounds=1) > 0
    for engine in engines.available_engines():
        assert bench.conv_call_us(engine, repeats=3, rounds=1, batch_size=2, size=4) > 0
    with pytest.raises(ValueError):
        bench.conv_call_us(None, size=0)


def test_qnnpack_microkernels_name_their_instruction_set():
    import platform

    kernels = bench.qnnpack_microkernels()
    if "qnnpack" in engines.available_engines() and platform.machine() in ("x86_64", "AMD64"):
        assert kernels and all(name.startswith(("pytorch_q8conv", "pytorch_q8gemm")) for name in kernels)
        assert all("sse2" in name for name in kernels)
