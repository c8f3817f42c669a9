import gzip

import pytest
import torch

from qlib import data
from qlib.errors import BadInputError
from qlib.smoke import sized, smoke


@pytest.fixture(scope="module")
def train():
    return data.fashion_mnist("train")


@pytest.fixture(scope="module")
def test_split():
    return data.fashion_mnist("test")


def test_items_are_normalised_float_images_with_int_labels(train, test_split):
    assert len(train) == 60_000 and len(test_split) == 10_000
    image, label = train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    assert set(test_split.targets.unique().tolist()) == set(range(10))


def test_normalisation_gives_zero_mean_unit_std_on_train(train):
    images, _ = train.tensors()
    assert abs(images.mean().item()) < 1e-3
    assert abs(images.std().item() - 1) < 1e-3


def test_item_matches_batched_tensors(test_split):
    images, labels = test_split.tensors()
    image, label = test_split[123]
    assert torch.equal(image, images[123]) and label == labels[123]


def test_subsets_are_deterministic_and_seeded():
    a, b = data.calibration_subset(64, seed=0), data.calibration_subset(64, seed=0)
    c = data.calibration_subset(64, seed=1)
    assert a.indices == b.indices and a.indices != c.indices
    assert len(set(a.indices)) == 64
    assert len(data.evaluation_subset(10_000)) == 10_000
    assert len(data.evaluation_subset(500)) == 500


def test_subset_size_is_checked(train):
    with pytest.raises(BadInputError, match="from 1 to 60000, not 0"):
        data.deterministic_subset(train, 0)
    with pytest.raises(BadInputError, match="from 1 to 60000, not 60001"):
        data.deterministic_subset(train, 60_001)


def test_missing_data_names_all_three_remedies(tmp_path):
    with pytest.raises(data.DataNotFoundError) as caught:
        data.FashionMNIST("test", search_dirs=[tmp_path])
    message = str(caught.value)
    assert str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "python -m qlib.data --download" in message
    assert "FashionMNIST/raw" in message


def _write_idx(path, array: torch.Tensor, compress: bool):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.numpy().tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_reads_plain_and_gzipped_idx_from_the_first_folder_that_has_them(tmp_path, compress):
    images = torch.randint(0, 256, (10_000, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (10_000,), dtype=torch.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    dataset = data.FashionMNIST("test", search_dirs=[tmp_path / "empty", tmp_path])
    assert dataset.source == tmp_path
    assert torch.equal(dataset.images, images) and torch.equal(dataset.targets, labels.long())


def test_corrupt_or_wrong_files_are_refused(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(data.DataFileError, match="magic"):
        data.FashionMNIST("test", search_dirs=[tmp_path])
    with pytest.raises(data.DataFileError, match="truncated"):
        data.read_idx(tmp_path / "t10k-labels-idx1-ubyte")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", torch.zeros(3, 28, 28, dtype=torch.uint8), False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", torch.zeros(3, dtype=torch.uint8), False)
    with pytest.raises(data.DataFileError, match="expected"):
        data.FashionMNIST("test", search_dirs=[tmp_path])


def test_unknown_split_is_refused():
    with pytest.raises(BadInputError, match="'train' or 'test'"):
        data.fashion_mnist("validation")


def test_smoke_switch(monkeypatch):
    monkeypatch.setenv("QLIB_SMOKE", "1")
    assert smoke() and sized(2048, 256) == 256
    monkeypatch.setenv("QLIB_SMOKE", "0")
    assert not smoke() and sized(2048, 256) == 2048
    monkeypatch.delenv("QLIB_SMOKE")
    assert not smoke()
    monkeypatch.setenv("QLIB_SMOKE", "maybe")
    with pytest.raises(ValueError, match="QLIB_SMOKE"):
        smoke()
