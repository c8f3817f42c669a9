"""What PyTorch computed on other CPUs, replayed by the interpreter with those CPUs' profiles.

data/kernel-recordings/<cpu-kind>/ holds compact recordings (qlib.int8.record, then
qlib.int8.compact); each folder's manifest.json says where and how it was recorded. Every file
is replayed on every machine: this is how the suite checks CPU kinds it does not run on.
"""

import json
import shutil

import pytest
import torch

from qlib.int8 import recordings, replay
from qlib.int8.cpu import KINDS

ROOT = recordings.course_recordings()
FILES = sorted(p for kind in recordings.recorded_kinds() for p in recordings.recording_files(ROOT / kind))


def test_the_course_holds_recordings_of_several_cpu_kinds():
    kinds = recordings.recorded_kinds()
    how = {kind: json.loads((ROOT / kind / "manifest.json").read_text())["recorded"] for kind in kinds}
    assert {k for k, h in how.items() if h == "real"} >= {"avx2", "avx512-vnni", "amx"}, how
    assert how.get("arm64") == "qemu", how
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total < 32 * 2 ** 20, f"recordings take {total / 2 ** 20:.1f} MB (limit 32)"
    for kind in kinds:
        manifest = json.loads((ROOT / kind / "manifest.json").read_text())
        assert manifest["note"] and set(manifest["files"]) == {p.name for p in recordings.recording_files(ROOT / kind)}
        assert manifest["recorded"] in recordings.HOW_RECORDED, (kind, manifest["recorded"])


def test_each_folder_is_named_after_the_cpu_kind_it_was_recorded_on():
    """A folder's name is what the course calls that CPU kind; the profile inside every file agrees
    (a learner's own recording replays under any folder name: its profile travels with it)."""
    for kind in recordings.recorded_kinds():
        assert kind in KINDS, f"{kind}: not a CPU kind of qlib.int8.cpu.KINDS ({sorted(KINDS)})"
        manifest = json.loads((ROOT / kind / "manifest.json").read_text())
        for path in recordings.recording_files(ROOT / kind):
            profile = recordings.profile_of(recordings.load(path)["cpu"])
            if manifest["recorded"] != "emulated":      # an emulation keeps some of its host's CPUID
                assert profile.kind == kind, (path, profile.kind)


def test_the_emulated_avx2_vnni_kind_computes_as_the_real_avx2_cpu_where_its_kernels_are_the_same():
    """avx2-vnni is an emulation (the libraries capped on a Xeon): checked against the real AVX2 CPU,
    it must agree where VNNI changes nothing (adds, FBGEMM, QNNPACK, oneDNN on 7-bit inputs) and
    differ where it does (oneDNN on 8-bit inputs: int16 pairs without VNNI, exact int32 with it)."""
    from qlib.int8 import diff

    for name in ("add-onednn", "add-x86", "layers-fbgemm-perchannel-rr", "layers-qnnpack-pertensor-full",
                 "layers-onednn-perchannel-rr"):
        d = diff.diff_recordings(*(recordings.load(ROOT / k / f"{name}.pt.xz") for k in ("avx2-vnni", "avx2")), name)
        assert d.same, d.line()
    d = diff.diff_recordings(*(recordings.load(ROOT / k / "layers-onednn-perchannel-full.pt.xz")
                               for k in ("avx2-vnni", "avx2")), "onednn 8-bit")
    assert not d.same, d.line()


# Linux ARM64 torch also runs engines x86 and onednn: oneDNN's ARM kernels and ATen's NEON loops, whose
# rounding the interpreter does not model. These files are replayed and must stay NOT exact (a strict
# expected failure: were one to become exact, this list is stale). The course engine there is qnnpack,
# whose ARM kernels the interpreter reproduces bit for bit (every arm64 qnnpack file is exact).
NOT_MODELLED = {"arm64": {"add-onednn", "add-x86", "layers-onednn-perchannel-full", "layers-x86-perchannel-rr",
                          "model-resnet18-fmnist-x86"}}


def _param(path):
    stem = path.name.split(".")[0]
    if stem in NOT_MODELLED.get(path.parent.name, ()):
        return pytest.param(path, marks=pytest.mark.xfail(strict=True, reason=(
            "Linux ARM64's x86 / onednn engines run oneDNN's ARM kernels and ATen's NEON loops, which the "
            "interpreter does not reproduce: the course engine on ARM is qnnpack")))
    return path


@pytest.mark.parametrize("path", [_param(p) for p in FILES], ids=[f"{p.parent.name}/{p.name.split('.')[0]}" for p in FILES])
def test_recording_replays_exactly(path):
    outcome = replay.replay_file(path)
    print(outcome.line())
    assert outcome.exact, outcome.line()


def _seednet_onednn(kind):
    path = ROOT / kind / "model-seednet-fmnist-onednn.pt.xz"
    return recordings.load(path)


def test_the_profile_matters(tmp_path):
    """Replayed as another CPU kind, a recording is not exact: the replay tests can fail."""
    rec = _seednet_onednn("avx512-vnni")            # oneDNN with 8-bit activations, one-by-one scales
    wrong = dict(rec, cpu={**rec["cpu"], "profile": {**vars(KINDS["avx2"]), "kind": "avx2"}})
    assert not replay.replay_model(wrong, "as avx2").exact
    assert replay.replay_model(rec, "as recorded").exact


def test_int16_saturation_is_what_makes_non_vnni_onednn_exact():
    """oneDNN without VNNI clips pairs of products to int16 (8-bit activations, onednn's own qconfig):
    exact int32 sums are not what the kernel computed; the emulated pairs are."""
    if "avx2" not in recordings.recorded_kinds():
        pytest.fail("the AVX2 recording is missing from data/kernel-recordings")
    rec = _seednet_onednn("avx2")
    profile = recordings.profile_of(rec["cpu"])
    assert profile.onednn_int16_pairs
    plain = dict(rec, cpu={**rec["cpu"], "profile": {**vars(profile), "int16_saturation": False}})
    assert not replay.replay_model(plain, "no saturation").exact
    assert replay.replay_model(rec, "as recorded").exact


def test_a_changed_output_is_caught(tmp_path):
    source = ROOT / "avx512-vnni" / "add-x86.pt.xz"
    rec = recordings.load(source)
    entry = next(a for a in rec["adds"] if isinstance(a["output"], torch.Tensor))
    entry["output"] = entry["output"].clone()
    entry["output"].view(-1)[0] ^= 1
    recordings.save(rec, tmp_path / "add-x86.pt.xz")
    outcome = replay.replay_file(tmp_path / "add-x86.pt.xz")
    assert not outcome.exact and outcome.mismatches == 1


def test_a_damaged_file_is_refused(tmp_path):
    folder = tmp_path / "kind"
    shutil.copytree(ROOT / "avx512-vnni", folder)
    target = folder / "add-x86.pt.xz"
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(recordings.RecordingError, match="sha256"):
        recordings.load(target)
    (folder / "manifest.json").unlink()
    with pytest.raises(recordings.RecordingError, match="not a readable recording"):
        recordings.load(target)
    (tmp_path / "empty").mkdir()
    with pytest.raises(recordings.RecordingError, match="no recording"):
        recordings.recording_files(tmp_path / "empty")


def test_record_compact_replay_round_trip(tmp_path):
    """The recorder's output, compacted, replays exactly on the machine that recorded it."""
    from qlib.int8 import compact, record

    (tmp_path / "raw").mkdir()
    record.record_adds(tmp_path / "raw", "qnnpack")
    compact.compact_folder(tmp_path / "raw", tmp_path / "small", note="test")
    outcomes = replay.replay(tmp_path / "small", echo=lambda line: None)
    assert [o.exact for o in outcomes] == [True]
    assert recordings.profile_of(recordings.load(tmp_path / "small" / "add-qnnpack.pt.xz")["cpu"]).kind == \
        recordings.profile_of(recordings.cpu_info()).kind


def test_only_engines_other_than_qnnpack_are_left_unmodelled_on_arm64():
    """The decision the arm64 recordings support: on ARM the course engine is qnnpack (its files replay exact)."""
    names = {p.name.split(".")[0] for p in recordings.recording_files(ROOT / "arm64")}
    assert {n for n in names if "qnnpack" in n} and not any("qnnpack" in n for n in NOT_MODELLED["arm64"])
    assert NOT_MODELLED["arm64"] <= names     # (tests/test_bad_input_pipeline.py: course_engine() on ARM)
