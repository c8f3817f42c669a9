"""Fashion-MNIST, found offline: the course's default data set.

The raw IDX files are looked for in two places, in order:
1. `data/FashionMNIST/raw/` in this repository (torchvision's layout; `--download` puts them there);
2. `/usr/share/datasets/fashion-mnist/` (Debian's `dataset-fashion-mnist` package, gzipped).
Nothing is downloaded unless asked for (`python -m qlib.data --download` or `download=True`),
so a test or a notebook never touches the network.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .errors import QlibError
from .paths import DATA_DIR

# Mean and standard deviation of the 60,000 training images, pixels scaled to [0, 1].
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
REPO_RAW_DIR = DATA_DIR / "FashionMNIST" / "raw"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SEARCH_DIRS = (REPO_RAW_DIR, DEBIAN_DIR)


class DataNotFoundError(QlibError, FileNotFoundError):
    """Fashion-MNIST's raw files are in none of the places the course looks."""


def _missing_message(split: str, search_dirs) -> str:
    names = ", ".join(f"{n}[.gz]" for n in SPLITS[split][:2])
    looked = "\n".join(f"  - {d}" for d in search_dirs)
    return (
        f"Fashion-MNIST ({split} split: {names}) was not found. Looked in:\n{looked}\n"
        "Any one of these fixes it:\n"
        "  1. Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist\n"
        "     (`make lab` and `make test` do this for you where apt is available)\n"
        "  2. Download it once with torchvision: python -m qlib.data --download\n"
        f"  3. Copy the four IDX files (gzipped or not) into {REPO_RAW_DIR}/"
    )


def find_raw_files(split: str, search_dirs=SEARCH_DIRS) -> tuple[Path, Path]:
    """Paths of the (images, labels) IDX files of `split`, from the first folder that has both."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}.")
    images, labels, _ = SPLITS[split]
    for folder in map(Path, search_dirs):
        found = [_first_existing(folder, name) for name in (images, labels)]
        if all(found):
            return found[0], found[1]
    raise DataNotFoundError(_missing_message(split, search_dirs))


def _first_existing(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (MNIST's format: magic, dims as big-endian int32, then uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number); "
                         "delete it and fetch the data again.")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = offset + int(torch.tensor(dims).prod())
    if len(raw) != expected:
        raise ValueError(f"{path} is truncated or corrupt: {len(raw)} bytes, expected {expected}; "
                         "delete it and fetch the data again.")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(dims)


def normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [N, 28, 28] -> float32 [N, 1, 28, 28], zero mean and unit variance on train."""
    return ((images_uint8.float() / 255.0 - MEAN) / STD).unsqueeze(-3)


class FashionMNIST(Dataset):
    """A torchvision-style data set: item i is (float tensor [1, 28, 28] normalised, int label).

    The whole split lives in memory as uint8 (47 MB for train); `tensors()` gives it as two
    batched tensors for the fast paths (evaluation, calibration) that need no DataLoader.
    """

    classes = CLASSES

    def __init__(self, split: str = "train", download: bool = False, search_dirs=SEARCH_DIRS):
        if download:
            download_raw()
        images_path, labels_path = find_raw_files(split, search_dirs)
        self.split = split
        self.images = read_idx(images_path)
        self.targets = read_idx(labels_path).long()
        count = SPLITS[split][2]
        if self.images.shape != (count, 28, 28) or self.targets.shape != (count,):
            raise ValueError(f"{images_path.parent} holds {tuple(self.images.shape)} images and "
                             f"{tuple(self.targets.shape)} labels for the {split} split, expected "
                             f"({count}, 28, 28) and ({count},); the files are not Fashion-MNIST's.")
        self.source = images_path.parent

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return normalise(self.images[index]), int(self.targets[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images, normalised [N, 1, 28, 28], and all labels [N]."""
        return normalise(self.images), self.targets.clone()

    def __repr__(self) -> str:
        return f"FashionMNIST(split={self.split!r}, n={len(self)}, source={str(self.source)!r})"


def fashion_mnist(split: str = "train", download: bool = False) -> FashionMNIST:
    """The `split` ("train" or "test") of Fashion-MNIST; see the module docstring for where from."""
    return FashionMNIST(split, download=download)


def deterministic_subset(dataset: Dataset, n: int, seed: int = 0) -> Subset:
    """`n` items drawn without replacement by a seeded generator: the same items on every machine."""
    if not 0 < n <= len(dataset):
        raise ValueError(f"n={n} must be between 1 and the data set's size {len(dataset)}.")
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:n]
    return Subset(dataset, indices.tolist())


def calibration_subset(n: int = 2048, seed: int = 0) -> Subset:
    """`n` training images for calibrating observers (never the test images we report on)."""
    return deterministic_subset(fashion_mnist("train"), n, seed)


def evaluation_subset(n: int = 10_000, seed: int = 0) -> Dataset:
    """`n` test images; the whole test split when n is 10,000."""
    test = fashion_mnist("test")
    return test if n == len(test) else deterministic_subset(test, n, seed)


def loader(dataset: Dataset, batch_size: int = 256, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A single-process DataLoader (the data is in memory; worker processes only cost time here)."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def download_raw(root: Path = DATA_DIR) -> Path:
    """Download the raw files with torchvision into data/FashionMNIST/raw/ (needs the internet)."""
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    for train in (True, False):
        TorchvisionFashionMNIST(root=str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.data", description=__doc__.splitlines()[0])
    parser.add_argument("--download", action="store_true", help="download with torchvision if missing")
    args = parser.parse_args(argv)
    if args.download:
        try:
            find_raw_files("train"), find_raw_files("test")
        except DataNotFoundError:
            print(f"Downloading Fashion-MNIST into {REPO_RAW_DIR} ...")
            download_raw()
    try:
        for split in SPLITS:
            images, labels = find_raw_files(split)
            print(f"Fashion-MNIST {split}: {images.parent}")
    except DataNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
