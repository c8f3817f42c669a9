import shutil

import pytest
import torch

from qlib import data, pretrained
from qlib.metrics import accuracy, predict
from qlib.paths import CHECKPOINT_DIR, MANIFEST

# The accuracies the course promises for its committed checkpoints (full test split).
MINIMUM_ACCURACY = {"seednet-fmnist": 88.0, "resnet18-fmnist": 92.5}
MAX_BYTES = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def test_tensors():
    return data.fashion_mnist("test").tensors()


@pytest.mark.parametrize("name", sorted(pretrained.CATALOGUE))
def test_checkpoint_is_committed_small_and_described(name):
    entry = pretrained.read_manifest()[name]
    path = pretrained.checkpoint_path(name)
    assert path.stat().st_size == entry["bytes"] <= MAX_BYTES
    assert entry["sha256"] == pretrained.sha256_of(path)
    for key in ("test_accuracy", "epochs", "seed", "torch", "date"):
        assert key in entry


@pytest.mark.parametrize("name", sorted(pretrained.CATALOGUE))
def test_checkpoint_reaches_its_accuracy_on_the_full_test_split(name, test_tensors):
    images, labels = test_tensors
    model = pretrained.load(name)
    assert not model.training
    measured = accuracy(predict(model, images), labels)
    assert measured >= MINIMUM_ACCURACY[name]
    # The manifest's figure is the same measurement, made when the checkpoint was written.
    assert abs(measured - pretrained.read_manifest()[name]["test_accuracy"]) < 0.02


def test_quantizable_resnet_loads_the_same_weights(test_tensors):
    images, _ = test_tensors
    plain = pretrained.load("resnet18-fmnist")
    quantizable = pretrained.load("resnet18-fmnist", quantizable=True)
    with torch.no_grad():
        assert torch.equal(plain(images[:16]), quantizable(images[:16]))


def _copy_checkpoints(tmp_path):
    for path in CHECKPOINT_DIR.iterdir():
        shutil.copy(path, tmp_path / path.name)
    return tmp_path, tmp_path / MANIFEST.name


def test_tampered_checkpoint_is_refused_with_its_name_and_the_fix(tmp_path):
    directory, manifest = _copy_checkpoints(tmp_path)
    path = directory / "seednet-fmnist.pt"
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    path.write_bytes(bytes(payload))
    with pytest.raises(pretrained.CheckpointError) as caught:
        pretrained.load("seednet-fmnist", directory=directory, manifest_path=manifest)
    message = str(caught.value)
    assert str(path) in message and "sha256" in message
    assert "python -m qlib.train seednet-fmnist" in message


def test_missing_checkpoint_and_unknown_name_are_explained(tmp_path):
    directory, manifest = _copy_checkpoints(tmp_path)
    (directory / "seednet-fmnist.pt").unlink()
    with pytest.raises(pretrained.CheckpointError, match="missing.*python -m qlib.train seednet-fmnist"):
        pretrained.load("seednet-fmnist", directory=directory, manifest_path=manifest)
    with pytest.raises(pretrained.CheckpointError, match="Unknown checkpoint"):
        pretrained.load("resnet50-imagenet")


def test_checkpoint_without_manifest_entry_is_refused(tmp_path):
    directory, manifest = _copy_checkpoints(tmp_path)
    manifest.write_text("{}")
    with pytest.raises(pretrained.CheckpointError, match="no entry"):
        pretrained.load("seednet-fmnist", directory=directory, manifest_path=manifest)


def test_loading_refuses_pickled_code(tmp_path):
    """weights_only=True: a checkpoint that smuggles an object is not unpickled, even with a valid checksum."""
    directory, manifest = _copy_checkpoints(tmp_path)
    path = directory / "seednet-fmnist.pt"
    torch.save({"weights": torch.zeros(1), "payload": shutil.rmtree}, path)
    entries = pretrained.read_manifest(manifest)
    entries["seednet-fmnist"]["sha256"] = pretrained.sha256_of(path)
    import json

    manifest.write_text(json.dumps(entries))
    with pytest.raises(pretrained.CheckpointError, match="weights_only=True"):
        pretrained.load_state_dict("seednet-fmnist", directory=directory, manifest_path=manifest)
