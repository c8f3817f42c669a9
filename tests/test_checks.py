"""Every checker accepts the right answer and refuses plausible wrong ones with a useful message."""

import torch

from qlib import checks, qmath


def test_report(capsys):
    assert checks.report(True, "well done") is True
    assert checks.report(False, "", "x is wrong", "try y") is False
    out = capsys.readouterr().out
    assert "Correct! well done" in out and "Not yet: x is wrong" in out and "Hint: try y" in out


def test_check_qparams_right_and_wrong(capsys):
    scale, zero_point = qmath.qparams(-1.5, 4.2, torch.quint8)
    assert checks.check_qparams(scale, zero_point, -1.5, 4.2)
    assert "Correct!" in capsys.readouterr().out
    # forgetting that the range is widened to include 0
    scale_no_zero, _ = qmath.qparams(0.5, 4.2)
    assert not checks.check_qparams((4.2 - 0.5) / 255, 0, 0.5, 4.2)
    out = capsys.readouterr().out
    assert "scale" in out and "include 0" in out and scale_no_zero != (4.2 - 0.5) / 255
    # right scale, zero point rounded the wrong way / left as a float
    assert not checks.check_qparams(scale, zero_point + 1, -1.5, 4.2)
    assert "zero point" in capsys.readouterr().out
    assert not checks.check_qparams(scale, 1.5 / scale, -1.5, 4.2)
    assert "integer" in capsys.readouterr().out
    assert not checks.check_qparams(None, None, -1.5, 4.2)
    assert "None" in capsys.readouterr().out


def test_check_qparams_symmetric_and_reduce_range(capsys):
    assert checks.check_qparams(*qmath.qparams(-0.3, 2.0, torch.qint8, symmetric=True), -0.3, 2.0,
                                torch.qint8, symmetric=True)
    assert checks.check_qparams(*qmath.qparams(0.0, 6.0, reduce_range=True), 0.0, 6.0, reduce_range=True)
    assert not checks.check_qparams(*qmath.qparams(0.0, 6.0), 0.0, 6.0, reduce_range=True)
    assert "[0, 127]" in capsys.readouterr().out


def _right_quantize_qint8(x, scale, zero_point):
    inv = 1 / torch.tensor(scale, dtype=torch.float32)
    return (torch.round(x * inv) + zero_point).clamp(-128, 127).to(torch.int8)


def test_check_quantize_right_and_wrong(capsys):
    assert checks.check_quantize(_right_quantize_qint8, torch.qint8)
    assert "Correct!" in capsys.readouterr().out

    def zero_point_first(x, scale, zero_point):
        return torch.round(x / scale + zero_point).clamp(-128, 127).to(torch.int8)

    assert not checks.check_quantize(zero_point_first, torch.qint8)
    out = capsys.readouterr().out
    assert "exact ties" in out and "after rounding" in out

    def no_clamp(x, scale, zero_point):
        return (torch.round(x / scale) + zero_point).to(torch.int64)

    assert not checks.check_quantize(no_clamp, torch.qint8)
    assert "clamp" in capsys.readouterr().out

    def floats(x, scale, zero_point):
        return (torch.round(x / scale) + zero_point).clamp(-128, 127)

    assert not checks.check_quantize(floats, torch.qint8)
    assert "float" in capsys.readouterr().out

    def unwritten(x, scale, zero_point):
        raise NotImplementedError

    assert not checks.check_quantize(unwritten)
    assert "not written yet" in capsys.readouterr().out


def test_check_quantize_quint8_uses_qmath():
    assert checks.check_quantize(lambda x, s, z: qmath.quantize(x, s, z, torch.quint8), torch.quint8)
    assert not checks.check_quantize(_right_quantize_qint8, torch.quint8)


def _moving_average(batches, c):
    lo, hi = torch.aminmax(batches[0])
    for batch in batches[1:]:
        cur_lo, cur_hi = torch.aminmax(batch)
        lo = lo + c * (cur_lo - lo)
        hi = hi + c * (cur_hi - hi)
    return lo, hi


def test_check_moving_average_right_and_wrong(capsys):
    assert checks.check_moving_average(_moving_average)
    assert checks.check_moving_average(_moving_average, averaging_constant=0.5)
    assert "Correct!" in capsys.readouterr().out

    def plain_minmax(batches, c):
        return torch.aminmax(torch.cat(batches))

    assert not checks.check_moving_average(plain_minmax)
    assert "first batch" in capsys.readouterr().out

    def in_double(batches, c):
        lo, hi = (float(v) for v in torch.aminmax(batches[0]))
        for batch in batches[1:]:
            lo = lo + c * (float(batch.min()) - lo) + 1e-12 * abs(lo)
            hi = hi + c * (float(batch.max()) - hi)
        return lo, hi

    assert not checks.check_moving_average(in_double)
    assert "float32" in capsys.readouterr().out
    assert not checks.check_moving_average(lambda b, c: 3.0)
    assert "pair" in capsys.readouterr().out


def test_check_per_channel_qparams_right_and_wrong(capsys):
    torch.manual_seed(0)
    weight = torch.randn(8, 3, 3, 3)
    scales, zero_points = qmath.qparams_per_channel(*qmath.channel_ranges(weight, 0))
    assert checks.check_per_channel_qparams(scales, zero_points, weight)
    assert "Correct!" in capsys.readouterr().out
    per_tensor = torch.full((8,), weight.abs().max() / 127.5)
    assert not checks.check_per_channel_qparams(per_tensor, zero_points, weight)
    assert "127.5" in capsys.readouterr().out
    assert not checks.check_per_channel_qparams(scales[:4], zero_points[:4], weight)
    assert "one scale" in capsys.readouterr().out
    assert not checks.check_per_channel_qparams(scales, zero_points + 128, weight)
    assert "zero point" in capsys.readouterr().out
