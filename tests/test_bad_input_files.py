"""Bad input files and arguments get a clear error: checkpoints and manifest, then data files.

Every case asserts the error class and that the message names the file or argument, the cause
and the fix. Files are tmp_path copies: the committed checkpoints and data are never touched.
"""

import errno
import gzip
import json
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from qlib import data, pretrained, train
from qlib.errors import BadInputError, QlibError
from qlib.paths import CHECKPOINT_DIR, MANIFEST
from qlib.pretrained import CheckpointError

NAME = "seednet-fmnist"
REBUILD = f"python -m qlib.train {NAME}"


def _says(message: str, *fragments: str) -> None:
    missing = [f for f in fragments if f not in message]
    assert not missing, f"message lacks {missing}:\n{message}"


# --- Checkpoints and manifest -------------------------------------------------------------------


@pytest.fixture
def checkpoints(tmp_path):
    """A copy of the committed checkpoint folder: (folder, manifest path)."""
    directory = tmp_path / "checkpoints"
    shutil.copytree(CHECKPOINT_DIR, directory)
    return directory, directory / MANIFEST.name


def _entries(manifest) -> dict:
    return json.loads(manifest.read_text())


def _record_sha256(manifest, name: str, digest) -> None:
    entries = _entries(manifest)
    entries[name]["sha256"] = digest
    manifest.write_text(json.dumps(entries))


def _save_with_matching_sha256(obj, directory, manifest):
    """A checkpoint whose manifest entry is right for it, so only its content can be refused."""
    path = directory / f"{NAME}.pt"
    torch.save(obj, path)
    _record_sha256(manifest, NAME, pretrained.sha256_of(path))
    return path


GOOD_SEEDNET_ENTRY = _entries(MANIFEST)[NAME]
BROKEN_MANIFESTS = {
    "truncated JSON": (b'{"seednet-fmnist": {"sha256": "fb4e', "is not valid JSON: Unterminated string"),
    "trailing comma": (b'{"seednet-fmnist": {},}', "is not valid JSON"),
    "empty file": (b"", "is empty"),
    "only whitespace": (b" \n\n", "is empty"),
    "not UTF-8": (b'{"seednet-fmnist": "\xff\xfe"}', "is not UTF-8"),
    "a list": (b"[]", "holds an array, but it must be a JSON object"),
    "a list of entries": (json.dumps([GOOD_SEEDNET_ENTRY]).encode(), "holds an array"),
    "a string": (b'"seednet-fmnist"', "holds a string"),
    "a number": (b"3", "holds a number"),
    "null": (b"null", "holds null"),
    "an entry that is a list": (b'{"seednet-fmnist": ["fb4e"]}', "the entry for 'seednet-fmnist' is an array"),
    "an entry that is a string": (b'{"seednet-fmnist": "fb4e"}', "the entry for 'seednet-fmnist' is a string"),
    "another entry that is null": (json.dumps({NAME: GOOD_SEEDNET_ENTRY, "resnet18-fmnist": None}).encode(),
                                   "the entry for 'resnet18-fmnist' is null"),
}


@pytest.mark.parametrize("content, cause", BROKEN_MANIFESTS.values(), ids=BROKEN_MANIFESTS)
def test_broken_manifest_is_named_with_its_fault_and_the_fix(checkpoints, content, cause):
    directory, manifest = checkpoints
    manifest.write_bytes(content)
    with pytest.raises(CheckpointError, match="Manifest") as caught:
        pretrained.load(NAME, directory=directory, manifest_path=manifest)
    _says(str(caught.value), str(manifest), cause, "git checkout --", "python -m qlib.train NAME")
    assert not isinstance(caught.value, (json.JSONDecodeError, AttributeError))


_MISSING = object()
SHA = GOOD_SEEDNET_ENTRY["sha256"]
BAD_DIGESTS = {
    "no sha256 field": (_MISSING, "has no 'sha256' field"),
    "null": (None, "'sha256': null, but a sha256 is a string of 64 hexadecimal digits"),
    "a number": (12345, "'sha256': 12345, but a sha256 is a string"),
    "a list": ([SHA], f"'sha256': [\"{SHA}\"], but"),
    "empty": ("", "which is 0 hexadecimal digits, not 64"),
    "one digit short": (SHA[:-1], "which is 63 hexadecimal digits, not 64"),
    "one digit long": (SHA + "0", "which is 65 hexadecimal digits, not 64"),
    "not hex": ("z" * 64, "which contains ['z']"),
    "a leading space": (" " + SHA[1:], "which contains [' ']"),
    "an algorithm prefix": ("sha256:" + SHA, "which contains [':', 'h', 's']"),
}


@pytest.mark.parametrize("digest, cause", BAD_DIGESTS.values(), ids=BAD_DIGESTS)
def test_bad_sha256_field_blames_the_manifest_not_the_checkpoint(checkpoints, digest, cause):
    directory, manifest = checkpoints
    entries = _entries(manifest)
    if digest is _MISSING:
        del entries[NAME]["sha256"]
    else:
        entries[NAME]["sha256"] = digest
    manifest.write_text(json.dumps(entries))
    with pytest.raises(CheckpointError) as caught:
        pretrained.load(NAME, directory=directory, manifest_path=manifest)
    message = str(caught.value)
    _says(message, str(manifest), cause, "The manifest is at fault, not the checkpoint file", REBUILD,
          "git checkout --")
    assert "does not match" not in message


@pytest.mark.parametrize("spelling", [str.upper, lambda digest: digest[:32].upper() + digest[32:]],
                         ids=["upper case", "mixed case"])
def test_sha256_digits_are_read_case_insensitively(checkpoints, spelling):
    directory, manifest = checkpoints
    _record_sha256(manifest, NAME, spelling(SHA))
    assert not pretrained.load(NAME, directory=directory, manifest_path=manifest).training


def test_paths_given_as_strings_work_everywhere(checkpoints):
    directory, manifest = checkpoints
    assert pretrained.read_manifest(str(manifest))[NAME]["sha256"] == SHA
    assert pretrained.checkpoint_path(NAME, str(directory)) == directory / f"{NAME}.pt"
    assert set(pretrained.available(str(directory), str(manifest))) == set(pretrained.CATALOGUE)
    state = pretrained.load_state_dict(NAME, directory=str(directory), manifest_path=str(manifest))
    assert state.keys() == pretrained.load(NAME, directory=str(directory)).state_dict().keys()


@pytest.mark.parametrize("argument, value, cause", [
    ("directory", None, "must be a path (a str or a pathlib.Path), not a NoneType"),
    ("directory", 3, "not an int"),
    ("directory", "", "is an empty string, which would silently mean the current folder"),
    ("manifest_path", None, "must be a path"),
    ("manifest_path", b"manifest.json", "not a bytes"),
    ("manifest_path", "  ", "is an empty string"),
])
def test_a_path_argument_that_is_no_path_is_refused_by_name(argument, value, cause):
    with pytest.raises(BadInputError) as caught:
        pretrained.load(NAME, **{argument: value})
    _says(str(caught.value), argument, cause)
    assert "pass" in str(caught.value).lower()


@pytest.mark.parametrize("name", [3, None, ["seednet-fmnist"]])
def test_a_name_that_is_not_a_string_is_refused_with_the_names_shipped(name):
    with pytest.raises(BadInputError, match="A checkpoint name is a string") as caught:
        pretrained.load(name)
    _says(str(caught.value), "pass one of", str(sorted(pretrained.CATALOGUE)))


@pytest.mark.parametrize("name", ["seednet", "SeedNet-FMNIST", "seednet-fmnist.pt"])
def test_an_unknown_name_is_refused_with_the_names_shipped(name):
    with pytest.raises(CheckpointError, match="Unknown checkpoint") as caught:
        pretrained.load_state_dict(name)
    _says(str(caught.value), repr(name), "pass one of these names", str(sorted(pretrained.CATALOGUE)))


@pytest.mark.parametrize("quantizable", ["yes", "no", 1, None])
def test_quantizable_must_be_a_bool(quantizable):
    with pytest.raises(BadInputError, match="quantizable must be True or False") as caught:
        pretrained.load(NAME, quantizable=quantizable)
    _says(str(caught.value), repr(quantizable), "truthy")


def test_missing_manifest_is_named(checkpoints):
    directory, manifest = checkpoints
    manifest.unlink()
    with pytest.raises(CheckpointError) as caught:
        pretrained.load(NAME, directory=directory, manifest_path=manifest)
    _says(str(caught.value), f"Manifest {manifest} is missing", "cannot be verified", "git checkout --",
          "python -m qlib.train NAME")


def test_manifest_that_is_a_folder_is_named(checkpoints):
    directory, manifest = checkpoints
    manifest.unlink()
    manifest.mkdir()
    with pytest.raises(CheckpointError) as caught:
        pretrained.read_manifest(manifest)
    _says(str(caught.value), f"Manifest {manifest} is a folder", "Move the folder away", "git checkout --")


@pytest.mark.parametrize("damage, cause", [
    ("folder", "is a folder, not a file"),
    ("no folder", "is missing: its folder"),
])
def test_checkpoint_that_is_a_folder_or_in_no_folder_is_explained(checkpoints, damage, cause):
    directory, manifest = checkpoints
    if damage == "folder":
        (directory / f"{NAME}.pt").unlink()
        (directory / f"{NAME}.pt").mkdir()
    else:
        directory = directory / "nowhere"
    with pytest.raises(CheckpointError) as caught:
        pretrained.load(NAME, directory=directory, manifest_path=manifest)
    _says(str(caught.value), str(directory / f"{NAME}.pt"), cause, REBUILD)


def test_pickled_code_is_refused_as_a_checkpoint_error(checkpoints):
    directory, manifest = checkpoints
    path = _save_with_matching_sha256({"weights": torch.zeros(1), "payload": shutil.rmtree}, directory, manifest)
    with pytest.raises(CheckpointError) as caught:
        pretrained.load_state_dict(NAME, directory=directory, manifest_path=manifest)
    _says(str(caught.value), str(path), "torch.load(weights_only=True) refused it", "pickled code",
          "Do not load it with weights_only=False", REBUILD)
    assert caught.value.__cause__ is not None


def test_a_file_that_is_no_torch_archive_is_refused(checkpoints):
    directory, manifest = checkpoints
    path = directory / f"{NAME}.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    _record_sha256(manifest, NAME, pretrained.sha256_of(path))
    with pytest.raises(CheckpointError) as caught:
        pretrained.load(NAME, directory=directory, manifest_path=manifest)
    _says(str(caught.value), str(path), "refused it", "not a saved state dict", REBUILD)


@pytest.mark.parametrize("content, cause", [
    ([torch.zeros(3)], "holds a list, not a state dict"),
    ({"conv1.weight": [1.0, 2.0]}, "['conv1.weight'] do not map a parameter name to a tensor"),
    ({"conv1.weight": torch.zeros(3)}, "does not fit the seednet-fmnist architecture: missing"),
])
def test_checkpoint_content_that_is_no_state_dict_of_the_architecture_is_refused(checkpoints, content, cause):
    directory, manifest = checkpoints
    path = _save_with_matching_sha256(content, directory, manifest)
    with pytest.raises(CheckpointError) as caught:
        pretrained.load(NAME, directory=directory, manifest_path=manifest)
    _says(str(caught.value), str(path), cause, REBUILD)


def test_checkpoint_of_another_architecture_names_keys_and_shapes(checkpoints):
    directory, manifest = checkpoints
    resnet_state = torch.load(directory / "resnet18-fmnist.pt", weights_only=True)
    path = _save_with_matching_sha256(resnet_state, directory, manifest)
    with pytest.raises(CheckpointError) as caught:
        pretrained.load(NAME, directory=directory, manifest_path=manifest)
    _says(str(caught.value), str(path), "does not fit the seednet-fmnist architecture", "missing", "unexpected",
          "saved from another model", REBUILD)


# train.save: everything checked first, both files or neither.

def _snapshot(directory) -> dict:
    """Every file in the folder, hidden temporaries included, with its bytes."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _save(directory, manifest, name=NAME, model=None, accuracy=91.5, history=(90.0, 91.5), epochs=2):
    model = pretrained.CATALOGUE[NAME].build() if model is None else model
    return train.save(name, model, accuracy, list(history), epochs, 0, 12.0, directory=directory,
                      manifest_path=manifest)


def test_save_writes_a_checkpoint_that_loads_and_keeps_the_other_entries(checkpoints):
    directory, manifest = checkpoints
    model = pretrained.CATALOGUE[NAME].build()
    entry = _save(directory, manifest, model=model)
    path = directory / f"{NAME}.pt"
    assert entry["sha256"] == pretrained.sha256_of(path) and entry["bytes"] == path.stat().st_size
    assert _entries(manifest)["resnet18-fmnist"] == _entries(MANIFEST)["resnet18-fmnist"]
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in CHECKPOINT_DIR.iterdir())
    loaded = pretrained.load(NAME, directory=directory, manifest_path=manifest)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_save_into_new_folders_creates_them(tmp_path):
    directory, manifest = tmp_path / "new" / "checkpoints", tmp_path / "other" / "manifest.json"
    _save(str(directory), str(manifest))
    assert pretrained.load(NAME, directory=directory, manifest_path=manifest) is not None


def _fail_fsync(monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(train.os, "fsync", no_space)


def _fail_moving_the_manifest(monkeypatch):
    real_replace = os.replace

    def replace(source, destination):
        if str(destination).endswith(MANIFEST.name):
            raise OSError(errno.EIO, "Input/output error", str(destination))
        real_replace(source, destination)
    monkeypatch.setattr(train.os, "replace", replace)


FAILED_SAVES = {
    "manifest not JSON": (dict(manifest=b'{"seednet-fmnist": '), {}, CheckpointError,
                          ["is not valid JSON", "git checkout --"]),
    "manifest a list": (dict(manifest=b"[]"), {}, CheckpointError, ["holds an array"]),
    "manifest empty": (dict(manifest=b""), {}, CheckpointError, ["is empty"]),
    "manifest entry null": (dict(manifest=b'{"seednet-fmnist": null}'), {}, CheckpointError, ["is null"]),
    "unknown name": ({}, dict(name="resnet50-imagenet"), CheckpointError, ["Unknown checkpoint"]),
    "another architecture": ({}, dict(model="resnet"), BadInputError,
                             ["does not fit the seednet-fmnist architecture", "CATALOGUE['seednet-fmnist']"]),
    "a state dict, not a model": ({}, dict(model="state dict"), BadInputError, ["needs the trained nn.Module"]),
    "accuracy above 100": ({}, dict(accuracy=191.5), BadInputError, ["from 0 to 100"]),
    "accuracy not a number": ({}, dict(accuracy="91.5"), BadInputError, ["accuracy in percent"]),
    "history shorter than epochs": ({}, dict(epochs=3), BadInputError, ["2 accuracies for epochs=3"]),
    "no epochs": ({}, dict(epochs=0, history=()), BadInputError, ["epochs must be a whole number >= 1"]),
    "disk full while writing": (dict(patch=_fail_fsync), {}, CheckpointError,
                                ["No space left on device", "Nothing was changed"]),
    "manifest cannot be moved into place": (dict(patch=_fail_moving_the_manifest), {}, CheckpointError,
                                            ["Input/output error", "Nothing was changed"]),
}


@pytest.mark.parametrize("setup, arguments, error, causes", FAILED_SAVES.values(), ids=FAILED_SAVES)
def test_failed_save_leaves_checkpoint_and_manifest_byte_identical(checkpoints, monkeypatch, setup, arguments,
                                                                   error, causes):
    directory, manifest = checkpoints
    if "manifest" in setup:
        manifest.write_bytes(setup["manifest"])
    models = {"resnet": lambda: pretrained.CATALOGUE["resnet18-fmnist"].build(),
              "state dict": lambda: pretrained.CATALOGUE[NAME].build().state_dict()}
    if "model" in arguments:
        arguments = {**arguments, "model": models[arguments["model"]]()}
    before = _snapshot(directory)
    if "patch" in setup:
        setup["patch"](monkeypatch)
    with pytest.raises(error) as caught:
        _save(directory, manifest, **arguments)
    monkeypatch.undo()
    assert _snapshot(directory) == before
    _says(str(caught.value), *causes)


@pytest.mark.parametrize("arguments, error, cause", [
    (dict(name="resnet50"), CheckpointError, "Unknown checkpoint"),
    (dict(name=None), BadInputError, "A checkpoint name is a string"),
    (dict(epochs=0), BadInputError, "epochs must be a whole number >= 1, not 0"),
    (dict(epochs=2.5), BadInputError, "epochs must be a whole number >= 1, not a float"),
    (dict(seed="0"), BadInputError, "seed must be a whole number >= 0, not a str"),
])
def test_train_refuses_bad_arguments_before_reading_any_data(monkeypatch, arguments, error, cause):
    monkeypatch.setattr(train, "fashion_mnist", lambda split: pytest.fail("read data before checking"))
    with pytest.raises(error) as caught:
        train.train(**{"name": NAME, **arguments})
    _says(str(caught.value), cause)


# --- Data files -----------------------------------------------------------------------------------

IMAGES = (torch.arange(3 * 28 * 28) % 7 * 30).to(torch.uint8).reshape(3, 28, 28)
LABELS = torch.tensor([9, 0, 3], dtype=torch.uint8)
DOWNLOAD_FIX = "python -m qlib.data --download"


def _idx(array: torch.Tensor) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.numpy().tobytes()


PLAIN_IMAGES = _idx(IMAGES)
GZIPPED_IMAGES = gzip.compress(PLAIN_IMAGES, mtime=0)
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("idx")


@pytest.mark.parametrize("name, content", [("t10k-images-idx3-ubyte.gz", GZIPPED_IMAGES),
                                           ("t10k-images-idx3-ubyte", PLAIN_IMAGES)], ids=["gzipped", "plain"])
@HYPOTHESIS
@given(fraction=st.floats(0, 1, exclude_max=True))
def test_any_truncation_of_an_idx_file_names_the_file_and_the_fix(scratch, name, content, fraction):
    path = scratch / name
    path.write_bytes(content[:int(fraction * len(content))])
    with pytest.raises(data.DataFileError) as caught:
        data.read_idx(path)
    message = str(caught.value)
    _says(message, str(path), DOWNLOAD_FIX)
    assert any(cause in message for cause in ("truncated", "is empty", "bad magic number")), message


@HYPOTHESIS
@given(position=st.integers(0, len(GZIPPED_IMAGES) - 1), flip=st.integers(1, 255))
def test_damaged_gzipped_idx_file_is_refused_by_name_or_read_exactly(scratch, position, flip):
    """Damage gzip cannot see (its header's time stamp) is harmless; any other gives the clear error."""
    path = scratch / "t10k-images-idx3-ubyte.gz"
    damaged = bytearray(GZIPPED_IMAGES)
    damaged[position] ^= flip
    path.write_bytes(bytes(damaged))
    try:
        images = data.read_idx(path)
    except data.DataFileError as error:
        _says(str(error), str(path), "t10k-images-idx3-ubyte", "Delete it")
    else:
        assert torch.equal(images, IMAGES)




BAD_IDX_FILES = {
    "plain IDX named .gz": ("x.gz", PLAIN_IMAGES, "is not gzipped although its name ends in .gz", "rename it to x"),
    "text named .gz": ("x.gz", b"hello", "gzip cannot decompress it (Not a gzipped file", DOWNLOAD_FIX),
    "gzip of nothing": ("x.gz", gzip.compress(b""), "is empty (its decompressed content has 0 bytes)", DOWNLOAD_FIX),
    "gzip of text": ("x.gz", gzip.compress(b"hello world"), "bad magic number 68656c6c", DOWNLOAD_FIX),
    "gzip of a header only": ("x.gz", gzip.compress(PLAIN_IMAGES[:16]), "its decompressed content has 16 bytes, "
                              "expected 2368 for 3 dimensions [3, 28, 28]", DOWNLOAD_FIX),
    "gzip with a wrong CRC": ("x.gz", GZIPPED_IMAGES[:-8] + b"\0" * 8, "CRC check failed", DOWNLOAD_FIX),
    "gzip with trailing junk": ("x.gz", GZIPPED_IMAGES + b"junk", "truncated or corrupt", DOWNLOAD_FIX),
    "gzipped without .gz": ("x", GZIPPED_IMAGES, "is gzipped but its name does not end in .gz", "rename it to x.gz"),
    "empty plain file": ("x", b"", "is empty (it has 0 bytes)", DOWNLOAD_FIX),
    "float IDX": ("x", b"\0\0\x0d\x01" + (1).to_bytes(4, "big") + b"\0" * 4, "not an unsigned-byte IDX file",
                  DOWNLOAD_FIX),
    "dimensions promise too much": ("x", b"\0\0\x08\x03" + b"\xff" * 12 + b"\0" * 10, "truncated or corrupt",
                                    DOWNLOAD_FIX),
}


@pytest.mark.parametrize("name, content, cause, fix", BAD_IDX_FILES.values(), ids=BAD_IDX_FILES)
def test_bad_idx_file_names_the_file_its_fault_and_the_fix(tmp_path, name, content, cause, fix):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(data.DataFileError) as caught:
        data.read_idx(str(path))
    _says(str(caught.value), str(path), cause, fix)
    assert isinstance(caught.value, ValueError)


def test_damaged_file_from_debian_says_to_reinstall_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(GZIPPED_IMAGES[: len(GZIPPED_IMAGES) // 2])
    with pytest.raises(data.DataFileError) as caught:
        data.read_idx(path)
    _says(str(caught.value), str(path), "truncated or corrupt",
          "sudo apt-get install --reinstall dataset-fashion-mnist")


def _write_test_split(folder, images=None, labels=None, compress=True):
    """A synthetic test split (10,000 zero images, labels 0..9) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    images = torch.zeros(10_000, 28, 28, dtype=torch.uint8) if images is None else images
    labels = (torch.arange(10_000) % 10).to(torch.uint8) if labels is None else labels
    for name, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(_idx(array), compresslevel=1))
        else:
            (folder / name).write_bytes(_idx(array))
    return folder


def test_damaged_file_met_while_loading_a_split_names_that_file(tmp_path):
    folder = _write_test_split(tmp_path)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-20])
    with pytest.raises(data.DataFileError) as caught:
        data.FashionMNIST("test", search_dirs=[folder])
    _says(str(caught.value), str(labels), "truncated or corrupt", DOWNLOAD_FIX)


def test_labels_outside_the_ten_classes_are_refused(tmp_path):
    labels = (torch.arange(10_000) % 10).to(torch.uint8)
    labels[7] = 12
    folder = _write_test_split(tmp_path, labels=labels, compress=False)
    with pytest.raises(data.DataFileError) as caught:
        data.FashionMNIST("test", search_dirs=[folder])
    _says(str(caught.value), str(folder / "t10k-labels-idx1-ubyte"), "has label 12", "0 to 9", DOWNLOAD_FIX)


# QLIB_DATA: read at each call; when set, the only place looked in.

@pytest.fixture
def default_places(tmp_path, monkeypatch):
    """The default places hold a valid test split, so a fall-back would succeed silently."""
    folder = _write_test_split(tmp_path / "default", compress=False)
    monkeypatch.setattr(data, "SEARCH_DIRS", (folder,))
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    return folder


def test_qlib_data_folder_is_used_when_set_after_import(tmp_path, monkeypatch, default_places):
    folder = _write_test_split(tmp_path / "mine")
    monkeypatch.setenv("QLIB_DATA", str(folder))
    dataset = data.fashion_mnist("test")
    assert dataset.source == folder and dataset.targets[:3].tolist() == [0, 1, 2]


@pytest.mark.parametrize("layout", ["FashionMNIST/raw", "relative"])
def test_qlib_data_accepts_torchvision_layout_and_relative_paths(tmp_path, monkeypatch, default_places, layout):
    if layout == "relative":
        folder = _write_test_split(tmp_path / "mine", compress=False)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("QLIB_DATA", "mine")
    else:
        folder = _write_test_split(tmp_path / "root" / "FashionMNIST" / "raw", compress=False)
        monkeypatch.setenv("QLIB_DATA", str(tmp_path / "root"))
    images, labels = data.find_raw_files("test")
    assert images.parent == folder and labels.parent == folder


@pytest.mark.parametrize("problem", ["does not exist", "is a file, not a folder", "lacks"])
def test_qlib_data_that_cannot_serve_says_so_instead_of_falling_back(tmp_path, monkeypatch, default_places,
                                                                       problem):
    folder = tmp_path / "mine"
    if problem == "is a file, not a folder":
        folder.write_text("not a folder")
    elif problem == "lacks":
        _write_test_split(folder, compress=False)
        (folder / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setenv("QLIB_DATA", str(folder))
    with pytest.raises(data.DataNotFoundError) as caught:
        data.fashion_mnist("test")
    message = str(caught.value)
    _says(message, f"QLIB_DATA={str(folder)!r} names {folder}", problem, "qlib looks nowhere else",
          "Copy the four IDX files", DOWNLOAD_FIX, "unset QLIB_DATA")
    if problem == "lacks":
        _says(message, "lacks t10k-labels-idx1-ubyte[.gz]")
        assert "t10k-images" not in message.split("lacks")[1].split("(")[0]


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_qlib_data_means_the_default_places(monkeypatch, default_places, value):
    monkeypatch.setenv("QLIB_DATA", value)
    assert data.find_raw_files("test")[0].parent == default_places


def test_missing_data_message_mentions_qlib_data(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="Set QLIB_DATA to a folder that holds them"):
        data.find_raw_files("test", search_dirs=[tmp_path])


# The other arguments of data.py's public functions.

@pytest.mark.parametrize("split", [None, 1, ["test"], "Test", "validation", "val"])
def test_split_must_be_train_or_test(split):
    for call in (data.fashion_mnist, data.find_raw_files):
        with pytest.raises(BadInputError, match="split must be 'train' or 'test'") as caught:
            call(split)
        _says(str(caught.value), repr(split), "calibrate on 'train', report on 'test'")


@pytest.mark.parametrize("download", ["no", 0, None])
def test_download_must_be_a_bool(download):
    with pytest.raises(BadInputError, match="download must be True or False") as caught:
        data.fashion_mnist("test", download=download)
    _says(str(caught.value), repr(download), "truthy")


@pytest.mark.parametrize("search_dirs, cause", [
    ([], "search_dirs is empty"),
    (5, "search_dirs must be a list of folders, not an int"),
    ([None], "each folder in search_dirs must be a path"),
    ([""], "each folder in search_dirs is an empty string"),
])
def test_search_dirs_must_be_folders(search_dirs, cause):
    with pytest.raises(BadInputError) as caught:
        data.find_raw_files("test", search_dirs=search_dirs)
    _says(str(caught.value), cause)
    assert "pass" in str(caught.value).lower()


def test_a_single_folder_is_one_place_not_its_characters(tmp_path):
    folder = _write_test_split(tmp_path / "one", compress=False)
    assert data.find_raw_files("test", search_dirs=str(folder))[0].parent == folder


BAD_COUNTS = [0, -5, 2.5, 64.0, "64", None, True, torch.tensor(64)]


SUBSETS = [(data.calibration_subset, n, "from 1 to 60000") for n in BAD_COUNTS + [60_001]] + \
          [(data.evaluation_subset, n, "from 1 to 10000") for n in BAD_COUNTS + [10_001]]


@pytest.mark.parametrize("subset, n, bounds", SUBSETS, ids=lambda v: getattr(v, "__name__", repr(v)))
def test_subset_size_is_checked_before_reading_data(monkeypatch, subset, n, bounds):
    monkeypatch.setattr(data, "fashion_mnist", lambda split: pytest.fail("read data before checking"))
    with pytest.raises(BadInputError) as caught:
        subset(n)
    _says(str(caught.value), bounds)


@pytest.mark.parametrize("seed", ["0", 1.5, None])
def test_subset_seed_must_be_a_whole_number(seed):
    with pytest.raises(BadInputError, match="seed must be a whole number") as caught:
        data.calibration_subset(64, seed=seed)
    _says(str(caught.value), repr(seed), "seed=0")


SMALL = TensorDataset(torch.zeros(10, 1, 28, 28), torch.zeros(10, dtype=torch.long))


@pytest.mark.parametrize("dataset, n, cause", [
    (SMALL, 11, "n must be a whole number from 1 to 10, not 11"),
    (SMALL, 3.0, "n must be a whole number from 1 to 10, not a float"),
    ((torch.zeros(10, 1, 28, 28), torch.zeros(10)), 3, "TensorDataset"),
    ([1, 2, 3], 2, "dataset must be a torch Dataset"),
])
def test_deterministic_subset_checks_its_data_set_and_size(dataset, n, cause):
    with pytest.raises(BadInputError) as caught:
        data.deterministic_subset(dataset, n)
    _says(str(caught.value), cause)


@pytest.mark.parametrize("arguments, cause, fix", [
    (dict(batch_size=0), "batch_size must be a whole number >= 1, not 0", "pass e.g. batch_size=256"),
    (dict(batch_size=-64), "not -64", "pass e.g. batch_size=256"),
    (dict(batch_size=2.5), "not a float (2.5)", "pass e.g. batch_size=256"),
    (dict(batch_size=None), "None would silently yield single images", "pass e.g. batch_size=256"),
    (dict(batch_size="64"), "not a str ('64')", "pass e.g. batch_size=256"),
    (dict(batch_size=True), "not a bool (True)", "pass e.g. batch_size=256"),
    (dict(shuffle="yes"), "shuffle must be True or False, not a str ('yes')", "would silently mean True"),
    (dict(seed=0.5), "seed must be a whole number >= 0, not a float", "pass e.g. seed=0"),
    (dict(dataset=(SMALL.tensors[0], SMALL.tensors[1])), "would batch the tuple, not the images",
     "Wrap tensors in torch.utils.data.TensorDataset(images, labels)"),
])
def test_loader_checks_its_arguments(arguments, cause, fix):
    with pytest.raises(BadInputError) as caught:
        data.loader(**{"dataset": SMALL, **arguments})
    _says(str(caught.value), cause, fix)


@pytest.mark.parametrize("images", [IMAGES.float(), IMAGES.numpy(), IMAGES.tolist()],
                         ids=["float tensor", "numpy array", "list"])
def test_normalise_takes_only_raw_uint8_pixels(images):
    with pytest.raises(BadInputError, match="normalise takes raw uint8 pixels") as caught:
        data.normalise(images)
    _says(str(caught.value), "dataset.tensors()")


def test_every_error_here_is_a_qlib_error():
    for error in (CheckpointError, data.DataFileError, data.DataNotFoundError, BadInputError):
        assert issubclass(error, QlibError)
