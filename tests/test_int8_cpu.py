"""The CPU profile and the one dispatch point: which kernel each CPU kind runs, decided as PyTorch does."""

import pytest
import torch

from qlib.int8 import KINDS, CpuProfile, Interpreter, dispatch
from qlib.int8.cpu import profile_from_flags

ZEN3 = {"avx2", "fma"}
ZEN4 = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_int8", "amx_tile", "avx_vnni"}
SKYLAKE_SP = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
ALDER_LAKE = ZEN3 | {"avx_vnni"}


@pytest.mark.parametrize("flags, kind", [(ZEN3, "avx2"), (ZEN4, "avx512-vnni"), (SAPPHIRE_RAPIDS, "amx"),
                                         (SKYLAKE_SP, "avx512"), (ALDER_LAKE, "avx2-vnni")])
def test_flags_make_the_known_kinds(flags, kind):
    assert profile_from_flags(flags).kind == kind


def test_arm_has_only_qnnpack_arithmetic():
    profile = profile_from_flags({"asimd", "asimddp"}, arch="arm64", system="Darwin")
    assert profile.kind == "arm64" and profile.fbgemm is None and profile.onednn is None


def test_int16_saturation_follows_each_librarys_isa():
    # AVX-VNNI alone: oneDNN uses it, FBGEMM does not (it has no AVX-VNNI kernels)
    alder = KINDS["avx2-vnni"]
    assert alder.fbgemm_int16_pairs() and not alder.onednn_int16_pairs
    assert KINDS["avx2"].fbgemm_int16_pairs() and KINDS["avx2"].onednn_int16_pairs
    assert not KINDS["avx512-vnni"].fbgemm_int16_pairs() and not KINDS["amx"].onednn_int16_pairs
    assert KINDS["avx512"].fbgemm_int16_pairs() and KINDS["avx512"].onednn_int16_pairs
    # FBGEMM's depthwise kernel is AVX2 code everywhere; its groupwise kernel reads CPUID
    assert KINDS["amx"].fbgemm_int16_pairs("depthwise") and not KINDS["amx"].fbgemm_int16_pairs("groupwise")
    capped = KINDS["amx"].replace(fbgemm="avx2")                  # FBGEMM_ENABLE_INSTRUCTIONS=AVX2
    assert capped.fbgemm_int16_pairs("im2col") and not capped.fbgemm_int16_pairs("groupwise")
    assert not KINDS["avx2"].replace(int16_saturation=False).fbgemm_int16_pairs("depthwise")


@pytest.mark.parametrize("geometry, avx512, path", [
    (dict(in_channels=32, out_channels=32, groups=32, kernel=(3, 3), stride=(1, 1), padding=(1, 1)), True, "depthwise"),
    (dict(in_channels=12, out_channels=12, groups=12, kernel=(3, 3), stride=(1, 1), padding=(1, 1)), True, "im2col"),
    (dict(in_channels=32, out_channels=32, groups=32, kernel=(3, 3), stride=(1, 1), padding=(0, 0)), True, "im2col"),
    (dict(in_channels=64, out_channels=64, groups=32, kernel=(3, 3), stride=(1, 1), padding=(1, 1)), True, "groupwise"),
    (dict(in_channels=8, out_channels=8, groups=4, kernel=(3, 3), stride=(1, 1), padding=(1, 1)), True, "im2col"),
    (dict(in_channels=8, out_channels=8, groups=4, kernel=(3, 3), stride=(1, 1), padding=(1, 1)), False, "groupwise"),
    (dict(in_channels=16, out_channels=32, groups=1, kernel=(1, 1), stride=(1, 1), padding=(0, 0)), True, "pointwise"),
    (dict(in_channels=16, out_channels=32, groups=1, kernel=(1, 1), stride=(2, 2), padding=(0, 0)), True, "im2col"),
])
def test_fbgemm_picks_its_kernel_by_shape(geometry, avx512, path):
    cpu = KINDS["avx512" if avx512 else "avx2"]
    assert dispatch.fbgemm_path({"dilation": (1, 1), **geometry}, cpu) == path


def test_environment_caps_lower_the_libraries_isa():
    capped = profile_from_flags(SAPPHIRE_RAPIDS, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI",
                                                      "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"})
    assert capped.onednn == "avx512_core_vnni" and capped.fbgemm == "avx2"
    assert capped.x86_conv_prefers_onednn          # PyTorch's routing reads CPUID, not the caps
    assert profile_from_flags(ZEN3, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}).onednn == "avx2"


@pytest.mark.parametrize("kind, system, groups, symmetric, expected", [
    ("avx2", "Linux", 1, True, "fbgemm"),
    ("avx2-vnni", "Linux", 1, True, "fbgemm"),        # AVX-VNNI is not AVX-512 VNNI
    ("avx512-vnni", "Linux", 1, True, "onednn"),
    ("amx", "Linux", 100, True, "onednn"),
    ("amx", "Linux", 101, True, "fbgemm"),            # groups <= 100 only
    ("amx", "Linux", 1, False, "fbgemm"),             # asymmetric weights
    ("amx", "Windows", 1, True, "fbgemm"),            # Linux only
])
def test_x86_engine_routes_convolutions_as_pytorch_does(kind, system, groups, symmetric, expected):
    cpu = KINDS[kind].replace(system=system)
    assert dispatch.library_for("conv", "x86", cpu, groups, symmetric) == expected
    assert dispatch.library_for("linear", "x86", cpu) == "fbgemm"
    assert dispatch.library_for("conv", "onednn", cpu, groups, symmetric) == "onednn"


def test_scalar_tail_follows_atens_build_and_threads():
    from qlib.int8.quirks import scalar_tail

    n = 1000
    assert scalar_tail(n, KINDS["avx2"].replace(threads=1)).tolist() == list(range(960, 1000))    # 1000 % 64
    # AVX-512 CPUs run ATen's AVX2 build of the quantized kernels: the same tail; DEFAULT has none
    assert scalar_tail(n, KINDS["amx"].replace(threads=1)).tolist() == list(range(960, 1000))
    assert scalar_tail(n, KINDS["arm64"].replace(threads=1)).tolist() == list(range(1000))
    two = scalar_tail(40000, KINDS["avx2"].replace(threads=2))                                    # 2 chunks
    assert two.tolist() == list(range(19968, 20000)) + list(range(39968, 40000))


def test_interpreter_takes_a_cpu_kind_by_name_or_profile():
    from qlib import pretrained, ptq, data

    qmodel = ptq.quantize_static(pretrained.load("seednet-fmnist"), data.calibration_subset(32), engine="x86",
                                 progress=False)
    assert Interpreter(qmodel, cpu="avx2").cpu == KINDS["avx2"]
    assert Interpreter(qmodel, cpu=KINDS["amx"]).cpu.kind == "amx"
    assert Interpreter(qmodel).cpu == CpuProfile.detect()
    with pytest.raises(ValueError, match="CPU kind"):
        Interpreter(qmodel, cpu="pentium")
    layer = Interpreter(qmodel, cpu="avx2").model.features[0]
    assert layer.arithmetic.label == "fbgemm im2col (int16 pairs)"
    assert Interpreter(qmodel, cpu="amx").model.features[0].arithmetic.library.startswith("onednn ")


def test_live_profile_is_what_torch_reports():
    profile = CpuProfile.detect()
    assert profile.aten == torch.backends.cpu.get_cpu_capability()
    print(profile.summary())
