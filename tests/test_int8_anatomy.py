"""The forum's table (int8.anatomy): what is integer and what float32, read from the dispatch."""

import pytest

from qlib.errors import BadInputError
from qlib.int8 import KINDS, anatomy

X86_KINDS = {k: v for k, v in KINDS.items() if v.arch == "x86_64"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fixed_point_is_integer_only_and_the_engines_are_not(kind):
    cpu = KINDS[kind]
    engines = [e for e in ("x86", "fbgemm", "onednn", "qnnpack") if anatomy.runs_on(e, cpu)]
    fixed = anatomy.forum_table(engines[:1], cpu, requant="fixedpoint")
    assert (fixed.xs("integer only?", axis=1, level=1) == "yes").all().all(), fixed
    table = anatomy.forum_table(engines, cpu)
    for engine in engines:
        weighted = table.loc[["conv 3x3", "linear"], (engine, "requantize")]
        assert weighted.str.contains("float32").all(), (engine, weighted)   # no CPU engine requantizes in integers


def test_bias_and_add_follow_the_library():
    cpu = KINDS["avx2"]
    assert anatomy.steps("conv 3x3", "qnnpack", cpu)["bias"].startswith("int32")
    assert anatomy.steps("conv 3x3", "fbgemm", cpu)["bias"].startswith("float32")
    assert anatomy.is_integer_only(anatomy.steps("add (FloatFunctional)", "qnnpack", cpu))
    assert not anatomy.is_integer_only(anatomy.steps("add (FloatFunctional)", "x86", cpu))
    assert anatomy.is_integer_only(anatomy.steps("ReLU", "x86", cpu))


def test_int16_pairs_where_the_recordings_say_so():
    """AVX2 (real recordings, replayed exact with pairs): FBGEMM pairs; AMX: only FBGEMM's depthwise."""
    table = anatomy.accumulation_by_kind(X86_KINDS, ["x86", "fbgemm", "qnnpack"])
    assert table.loc["avx2", "x86"] == table.loc["avx2", "fbgemm"] == "int16 pairs in every one"
    assert table.loc["amx", "x86"] == "exact int32 everywhere"
    assert table.loc["amx", "fbgemm"] == "int16 pairs: depthwise conv 3x3"
    assert (table["qnnpack"] == "exact int32 everywhere").all()
    arm = anatomy.accumulation_by_kind({"arm64": KINDS["arm64"]}, ["x86", "onednn", "qnnpack"])
    assert arm.loc["arm64"].tolist() == ["-", "-", "exact int32 everywhere"]


def test_bad_layer_type_and_engine_are_refused():
    with pytest.raises(BadInputError, match="layer types"):
        anatomy.steps("conv 5x5", "x86", KINDS["avx2"])
    with pytest.raises(BadInputError, match="engine"):
        anatomy.steps("conv 3x3", "x68", KINDS["avx2"])


def test_vnni_only_where_the_running_kernel_uses_it():
    assert anatomy.uses_vnni("conv 3x3", "x86", KINDS["amx"])              # oneDNN's AMX kernel
    assert anatomy.uses_vnni("conv 3x3", "fbgemm", KINDS["avx512-vnni"])   # FBGEMM's AVX-512 VNNI path
    assert not anatomy.uses_vnni("depthwise conv 3x3", "fbgemm", KINDS["amx"])   # its depthwise pairs in int16
    assert not anatomy.uses_vnni("conv 3x3", "x86", KINDS["avx2-vnni"])    # x86 -> FBGEMM, which has no AVX-VNNI
    assert anatomy.uses_vnni("conv 3x3", "onednn", KINDS["avx2-vnni"])     # oneDNN uses it
    assert not any(anatomy.uses_vnni("conv 3x3", "qnnpack", cpu) for cpu in KINDS.values())
