"""Notebook 08's checkers: each accepts the reference solution, refuses the typical mistake with a
message that names it, and refuses a stub that raises NotImplementedError; under the course's
engine and under qnnpack (the engine of ARM machines)."""

import math

import pytest
import torch

from qlib import checks, data, engines, int8, pretrained, ptq, quiet

quiet.quiet_deprecations()


def f32(value):
    return torch.tensor(value, dtype=torch.float32)


# --- reference solutions (as in notebook 08) -----------------------------------------------------


def accumulator(q_x, z_x, q_w, stride, padding, n, oc, oy, ox):
    acc = 0
    for c in range(q_w.shape[1]):
        for ky in range(q_w.shape[2]):
            for kx in range(q_w.shape[3]):
                iy, ix = oy * stride[0] - padding[0] + ky, ox * stride[1] - padding[1] + kx
                if 0 <= iy < q_x.shape[2] and 0 <= ix < q_x.shape[3]:
                    acc += (int(q_x[n, c, iy, ix]) - z_x) * int(q_w[oc, c, ky, kx])
    return acc


def requantize_for(library, zero_point_first=False):
    def requantize(acc, in_scale, w_scale, bias, out_scale, out_zero_point, relu):
        if library.startswith("qnnpack"):
            ats = f32(w_scale) * f32(in_scale)
            acc = acc + int(torch.round(f32(bias) * (1 / ats)))
            raw = f32(acc) * (ats * (1 / f32(out_scale)))
        else:
            ats = f32(in_scale) * f32(w_scale)
            raw = (f32(acc) + f32(bias) / ats) * (ats / f32(out_scale))
        q = int(torch.round(raw + out_zero_point)) if zero_point_first else int(torch.round(raw)) + out_zero_point
        return min(max(q, out_zero_point if relu else 0), 255)
    return requantize


def add_for(engine):
    def quantized_add(qa, sa, za, qb, sb, zb, s, z, relu):
        if engine == "qnnpack":
            ra, rb = float(f32(sa) / f32(s)), float(f32(sb) / f32(s))
            shift = 21 - (math.frexp(max(ra, rb))[1] - 1)
            am, bm = round(ra * 2 ** shift), round(rb * 2 ** shift)
            acc = (qa.long() - za) * am + (qb.long() - zb) * bm
            half = 1 << (shift - 1)
            q = torch.where(acc >= 0, (acc + half) >> shift, -((half - acc) >> shift))
        else:
            c = f32(sa) * (qa.int() - za).float() + f32(sb) * (qb.int() - zb).float()
            if relu:
                c = c.clamp_min(0)
            q = torch.round(c * (1 / f32(s)))
        return (q + z).clamp(z if relu else 0, 255).to(torch.int32)
    return quantized_add


def quantize_multiplier(real):
    mantissa, exponent = math.frexp(real)
    m0 = round(mantissa * 2 ** 31)
    if m0 == 2 ** 31:
        m0, exponent = m0 // 2, exponent + 1
    return m0, -exponent


def rounding_divide_by_pot(x, exponent):
    mask = (1 << exponent) - 1
    remainder, threshold = x & mask, (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def multiply(x, m0, shift):
    total = x * m0 + ((1 << 30) if x * m0 >= 0 else 1 - (1 << 30))
    high = abs(total) >> 31 if total >= 0 else -(abs(total) >> 31)
    return rounding_divide_by_pot(high, shift)


def unwritten(*args):
    raise NotImplementedError()


ENGINES = sorted({engines.course_engine(), "qnnpack"} & set(engines.available_engines()))


@pytest.fixture(scope="module", params=ENGINES)
def setting(request):
    engine = request.param
    seednet = ptq.quantize_static(pretrained.load("seednet-fmnist"), data.calibration_subset(32), engine=engine,
                                  progress=False)
    images = data.fashion_mnist("test").tensors()[0][:64]
    library = int8.Interpreter(seednet).model.classifier[1].arithmetic.library
    return engine, seednet, images, library


def verdict(capsys):
    return capsys.readouterr().out


# --- exercise 1 -----------------------------------------------------------------------------------------


def test_conv_accumulator(setting, capsys):
    _engine, seednet, images, _library = setting
    conv, x_q = seednet.features[0], seednet.quant(images[:4])
    assert x_q.q_zero_point() != 0        # so that forgetting it shows
    assert checks.check_conv_accumulator(accumulator, conv, x_q)
    assert "Correct!" in verdict(capsys)

    def no_zero_point(q_x, z_x, *rest):
        return accumulator(q_x, 0, *rest)
    assert not checks.check_conv_accumulator(no_zero_point, conv, x_q)
    assert "zero point" in verdict(capsys)

    def zeros_in_padding(q_x, z_x, q_w, stride, padding, n, oc, oy, ox):
        acc = 0
        for c in range(q_w.shape[1]):
            for ky in range(q_w.shape[2]):
                for kx in range(q_w.shape[3]):
                    iy, ix = oy * stride[0] - padding[0] + ky, ox * stride[1] - padding[1] + kx
                    inside = 0 <= iy < q_x.shape[2] and 0 <= ix < q_x.shape[3]
                    acc += ((int(q_x[n, c, iy, ix]) if inside else 0) - z_x) * int(q_w[oc, c, ky, kx])
        return acc
    assert not checks.check_conv_accumulator(zeros_in_padding, conv, x_q)
    assert "padding holds the zero point" in verdict(capsys)

    def tensors(q_x, z_x, q_w, stride, padding, n, oc, oy, ox):   # uint8 arithmetic wraps around
        acc = 0
        for c in range(q_w.shape[1]):
            for ky in range(q_w.shape[2]):
                for kx in range(q_w.shape[3]):
                    iy, ix = oy * stride[0] - padding[0] + ky, ox * stride[1] - padding[1] + kx
                    if 0 <= iy < q_x.shape[2] and 0 <= ix < q_x.shape[3]:
                        acc += int((q_x[n, c, iy, ix] - z_x).int() * int(q_w[oc, c, ky, kx]))
        return acc
    assert not checks.check_conv_accumulator(tensors, conv, x_q)
    assert "wrapped around" in verdict(capsys)

    assert not checks.check_conv_accumulator(unwritten, conv, x_q)
    assert "not written yet" in verdict(capsys)
    assert not checks.check_conv_accumulator(accumulator, conv, images[:4])     # a float input
    assert "quantized tensor" in verdict(capsys)
    assert not checks.check_conv_accumulator(lambda *a: 0.5, conv, x_q)
    assert "integer" in verdict(capsys)


# --- exercise 2 -----------------------------------------------------------------------------------------


def test_requantize(setting, capsys):
    engine, seednet, images, library = setting
    layer = seednet.classifier[1]
    x_q = torch.flatten(seednet.features(seednet.quant(images)), 1)
    assert checks.check_requantize(requantize_for(library), layer, x_q, engine)
    assert f"{library} under engine {engine!r}" in verdict(capsys)

    def float64(acc, in_scale, w_scale, bias, out_scale, out_zero_point, relu):
        q = round((acc + bias / (in_scale * w_scale)) * (in_scale * w_scale / out_scale)) + out_zero_point
        return min(max(q, out_zero_point if relu else 0), 255)
    assert not checks.check_requantize(float64, layer, x_q, engine)
    out = verdict(capsys)
    assert "outputs differ from PyTorch's" in out and ("float32" in out or "textbook" in out)

    assert not checks.check_requantize(requantize_for(library, zero_point_first=True), layer, x_q, engine)
    assert "zero point after" in verdict(capsys)

    other = "qnnpack" if library.startswith("fbgemm") else "fbgemm"
    assert not checks.check_requantize(requantize_for(other), layer, x_q, engine)
    assert "that is" in verdict(capsys)        # names the other library's formula

    assert not checks.check_requantize(unwritten, layer, x_q, engine)
    assert "not written yet" in verdict(capsys)
    assert not checks.check_requantize(requantize_for(library), layer, x_q, "no-such-engine")
    assert "engine" in verdict(capsys)


# --- exercise 3 -----------------------------------------------------------------------------------------


def test_quantized_add(setting, capsys):
    engine = setting[0]
    assert checks.check_quantized_add(add_for(engine), engine)
    assert "Correct!" in verdict(capsys)

    def float64(qa, sa, za, qb, sb, zb, s, z, relu):
        c = sa * (qa.double() - za) + sb * (qb.double() - zb)
        c = c.clamp_min(0) if relu else c
        return (torch.round(c / s) + z).clamp(z if relu else 0, 255).long()
    assert not checks.check_quantized_add(float64, engine)
    out = verdict(capsys)
    assert ("float64" in out) if engine != "qnnpack" else ("QNNPACK" in out)

    def uint8_wrap(qa, sa, za, qb, sb, zb, s, z, relu):
        c = f32(sa) * (qa - za).float() + f32(sb) * (qb - zb).float()
        c = c.clamp_min(0) if relu else c
        return (torch.round(c * (1 / f32(s))) + z).clamp(z if relu else 0, 255).long()
    assert not checks.check_quantized_add(uint8_wrap, engine)
    assert "differ" in verdict(capsys)

    if engine == "qnnpack" and "x86" in engines.available_engines():
        assert not checks.check_quantized_add(add_for("x86"), engine)
        assert "that is ATen's float add" in verdict(capsys)
    assert not checks.check_quantized_add(lambda qa, *rest: qa.float(), engine)
    assert "float tensor" in verdict(capsys)
    assert not checks.check_quantized_add(unwritten, engine)
    assert "not written yet" in verdict(capsys)


# --- exercises 4 and 5 ----------------------------------------------------------------------------------


def test_quantize_multiplier(capsys):
    assert checks.check_quantize_multiplier(quantize_multiplier)
    assert "Correct!" in verdict(capsys)

    def no_carry(real):
        mantissa, exponent = math.frexp(real)
        return round(mantissa * 2 ** 31), -exponent
    assert not checks.check_quantize_multiplier(no_carry)
    assert "below 2**31" in verdict(capsys)

    def truncated(real):
        mantissa, exponent = math.frexp(real)
        return int(mantissa * 2 ** 31), -exponent
    assert not checks.check_quantize_multiplier(truncated)
    assert "do not truncate" in verdict(capsys)

    def sign(real):
        m0, shift = quantize_multiplier(real)
        return m0, -shift
    assert not checks.check_quantize_multiplier(sign)
    assert "shift counts the right shifts" in verdict(capsys)

    assert not checks.check_quantize_multiplier(lambda real: real)
    assert "pair" in verdict(capsys)
    assert not checks.check_quantize_multiplier(unwritten)
    assert "not written yet" in verdict(capsys)


def test_fixed_point_multiply(capsys):
    assert checks.check_fixed_point_multiply(multiply, rounding_divide_by_pot)
    out = verdict(capsys)
    assert "Correct!" in out and ("QNNPACK's add" in out or "no qnnpack" in out)

    def floor_shift(x, exponent):
        return x >> exponent
    assert not checks.check_fixed_point_multiply(multiply, floor_shift)
    assert "rounds down" in verdict(capsys)

    def half_even(x, exponent):
        return round(x / 2 ** exponent)
    assert not checks.check_fixed_point_multiply(multiply, half_even)
    assert "away from zero" in verdict(capsys)

    def floor_division(x, m0, shift):
        total = x * m0 + ((1 << 30) if x * m0 >= 0 else 1 - (1 << 30))
        return rounding_divide_by_pot(total // 2 ** 31, shift)
    assert not checks.check_fixed_point_multiply(floor_division, rounding_divide_by_pot)
    assert "truncates towards zero" in verdict(capsys)

    def in_float(x, m0, shift):
        return rounding_divide_by_pot(round(x * m0 / 2.0 ** 31), shift)
    assert not checks.check_fixed_point_multiply(in_float, rounding_divide_by_pot)
    assert "62-bit" in verdict(capsys)

    assert not checks.check_fixed_point_multiply(unwritten, rounding_divide_by_pot)
    assert "not written yet" in verdict(capsys)
    assert not checks.check_fixed_point_multiply(multiply, unwritten)
    assert "not written yet" in verdict(capsys)
    assert not checks.check_fixed_point_multiply(multiply, lambda x, e: x / 2 ** e)
    assert "integer" in verdict(capsys)
