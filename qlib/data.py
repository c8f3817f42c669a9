"""Fashion-MNIST, found offline: the course's default data set.

The raw IDX files (gzipped or not) are looked for, at each call, in:
- the folder named by the environment variable QLIB_DATA, when it is set (or its
  FashionMNIST/raw/ subfolder, torchvision's layout), and nowhere else: a missing folder or
  file there is an error, never a silent fall-back to another copy;
- otherwise, in order, `data/FashionMNIST/raw/` in this repository (where `--download` puts
  them) and `/usr/share/datasets/fashion-mnist/` (Debian's `dataset-fashion-mnist` package).
Nothing is downloaded unless asked for (`python -m qlib.data --download` or `download=True`),
so a test or a notebook never touches the network. A damaged file, gzipped or not, raises
DataFileError naming the file and how to replace it.
"""

from __future__ import annotations

import argparse
import gzip
import math
import numbers
import os
import sys
import zlib
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .errors import BadInputError, QlibError, check_flag, check_whole, kind_of, shown
from .paths import DATA_DIR, as_path

# Mean and standard deviation of the 60,000 training images, pixels scaled to [0, 1].
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
DATA_ENV_VAR = "QLIB_DATA"
REPO_RAW_DIR = DATA_DIR / "FashionMNIST" / "raw"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SEARCH_DIRS = (REPO_RAW_DIR, DEBIAN_DIR)  # where to look when QLIB_DATA is not set
GZIP_MAGIC = b"\x1f\x8b"


class DataNotFoundError(QlibError, FileNotFoundError):
    """Fashion-MNIST's raw files are in none of the places the course looks."""


class DataFileError(QlibError, ValueError):
    """A data file is there but unusable: unreadable, truncated, corrupt, or not Fashion-MNIST's."""


def env_data_folder() -> Path | None:
    """The folder QLIB_DATA names (absolute), or None when it is unset or empty; read at each call."""
    value = os.environ.get(DATA_ENV_VAR, "").strip()
    return Path(value).expanduser().absolute() if value else None


def default_search_dirs() -> tuple[Path, ...]:
    """QLIB_DATA's folder and its torchvision layout when QLIB_DATA is set, else SEARCH_DIRS."""
    folder = env_data_folder()
    return SEARCH_DIRS if folder is None else (folder, folder / "FashionMNIST" / "raw")


def _split_files(split: str) -> tuple[str, str, int]:
    if not isinstance(split, str) or split not in SPLITS:
        raise BadInputError(f"split must be 'train' or 'test', not {split!r}; the course uses no other "
                            "split (calibrate on 'train', report on 'test').")
    return SPLITS[split]


def _search_folders(search_dirs) -> list[Path]:
    """`search_dirs` as a list of folders; one path counts as one folder, not as its characters."""
    if search_dirs is None:
        return list(default_search_dirs())
    if isinstance(search_dirs, (str, os.PathLike)):
        search_dirs = [search_dirs]
    if not hasattr(search_dirs, "__iter__"):
        raise BadInputError(f"search_dirs must be a list of folders, not {kind_of(search_dirs)} "
                            f"({search_dirs!r}); pass e.g. [Path('my/data')], or leave it out to use "
                            "QLIB_DATA or the default places.")
    folders = [as_path(folder, "each folder in search_dirs") for folder in search_dirs]
    if not folders:
        raise BadInputError("search_dirs is empty, so there is nowhere to look for Fashion-MNIST; pass at "
                            "least one folder, or leave it out to use QLIB_DATA or the default places.")
    return folders


def _missing_message(split: str, search_dirs) -> str:
    names = ", ".join(f"{n}[.gz]" for n in SPLITS[split][:2])
    looked = "\n".join(f"  - {d}" for d in search_dirs)
    return (
        f"Fashion-MNIST ({split} split: {names}) was not found. Looked in:\n{looked}\n"
        "Any one of these fixes it:\n"
        "  1. Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist\n"
        "     (`make lab` and `make test` do this for you where apt is available)\n"
        "  2. Download it once with torchvision: python -m qlib.data --download\n"
        f"  3. Copy the four IDX files (gzipped or not) into {REPO_RAW_DIR}/\n"
        f"  4. Set {DATA_ENV_VAR} to a folder that holds them"
    )


def _env_missing_message(split: str, folder: Path) -> str:
    """Why QLIB_DATA's folder does not serve `split`; qlib then looks nowhere else, so say it plainly."""
    value = os.environ.get(DATA_ENV_VAR, "").strip()
    if not folder.exists():
        problem = "does not exist"
    elif not folder.is_dir():
        problem = "is a file, not a folder"
    else:
        lacking = [name for name in SPLITS[split][:2]
                   if not any(_first_existing(d, name) for d in default_search_dirs())]
        problem = f"lacks {', '.join(f'{n}[.gz]' for n in lacking)} (looked in it and in its FashionMNIST/raw/)"
    return (f"{DATA_ENV_VAR}={value!r} names {folder}, which {problem}, so the {split} split of Fashion-MNIST "
            f"cannot be read. While {DATA_ENV_VAR} is set, qlib looks nowhere else. Copy the four IDX files "
            f"(gzipped or not) into {folder}, download them there with `python -m qlib.data --download`, or "
            f"unset {DATA_ENV_VAR} to use {REPO_RAW_DIR} or {DEBIAN_DIR}.")


def find_raw_files(split: str, search_dirs=None) -> tuple[Path, Path]:
    """Paths of the (images, labels) IDX files of `split`, from the first folder that has both.

    `search_dirs=None` means QLIB_DATA's folder when that is set, else SEARCH_DIRS.
    """
    images, labels, _ = _split_files(split)
    folders = _search_folders(search_dirs)
    for folder in folders:
        found = [_first_existing(folder, name) for name in (images, labels)]
        if all(found):
            return found[0], found[1]
    if search_dirs is None and env_data_folder() is not None:
        raise DataNotFoundError(_env_missing_message(split, env_data_folder()))
    raise DataNotFoundError(_missing_message(split, folders))


def _first_existing(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def replace_advice(path: Path) -> str:
    """How to replace a bad data file, which depends on who put it there."""
    if path.parent == DEBIAN_DIR:
        return ("It comes from Debian's package: reinstall it with "
                "`sudo apt-get install --reinstall dataset-fashion-mnist`.")
    return (f"Delete it and fetch the data again with `python -m qlib.data --download`, or copy an intact "
            f"{path.name} into {path.parent}; Debian's `dataset-fashion-mnist` package also has it.")


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (MNIST's format: magic, dims as big-endian int32, then uint8 data), gzipped or not."""
    path = as_path(path, "path")
    return _parse_idx(_read_bytes(path), path)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed if it ends in .gz; every way that can fail names the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError as error:
        raise DataNotFoundError(f"{path} does not exist. {replace_advice(path)}") from error
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataFileError(_gzip_damage_message(path, error)) from error
    except OSError as error:
        raise DataFileError(f"{path} cannot be read: {error.strerror or error}. Check its permissions, "
                            f"or replace it. {replace_advice(path)}") from error


def _gzip_damage_message(path: Path, error: Exception) -> str:
    if _starts_with_idx_magic(path):
        return (f"{path} is not gzipped although its name ends in .gz (it starts like a plain IDX file): "
                f"rename it to {path.with_suffix('').name}.")
    reason = "it ends before the compressed data does" if isinstance(error, EOFError) else str(error)
    return (f"{path} is truncated or corrupt: gzip cannot decompress it ({reason}); an interrupted copy or "
            f"download, or a damaged disk, does this. {replace_advice(path)}")


def _starts_with_idx_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(3)
    return head == b"\x00\x00\x08"


def _parse_idx(raw: bytes, path: Path) -> torch.Tensor:
    content = "its decompressed content" if path.suffix == ".gz" else "it"
    if not raw:
        raise DataFileError(f"{path} is empty ({content} has 0 bytes). {replace_advice(path)}")
    if raw[:2] == GZIP_MAGIC:
        raise DataFileError(f"{path} is gzipped but its name does not end in .gz, so it was read as a plain "
                            f"IDX file: rename it to {path.name}.gz.")
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataFileError(f"{path} is not an unsigned-byte IDX file (bad magic number {raw[:4].hex()}, "
                            f"expected 000008 then the number of dimensions). {replace_advice(path)}")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = offset + math.prod(dims)
    if len(raw) != expected:
        raise DataFileError(f"{path} is truncated or corrupt: {content} has {len(raw)} bytes, expected "
                            f"{expected} for {ndim} dimensions {dims}. {replace_advice(path)}")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(dims)


def normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [N, 28, 28] -> float32 [N, 1, 28, 28], zero mean and unit variance on train."""
    if not isinstance(images_uint8, torch.Tensor) or images_uint8.dtype != torch.uint8:
        raise BadInputError(f"normalise takes raw uint8 pixels (0 to 255), not {kind_of(images_uint8)}: "
                            "normalising float images again would silently shift every pixel. Pass "
                            "dataset.images, or use dataset.tensors(), which is already normalised.")
    return ((images_uint8.float() / 255.0 - MEAN) / STD).unsqueeze(-3)


class FashionMNIST(Dataset):
    """A torchvision-style data set: item i is (float tensor [1, 28, 28] normalised, int label).

    The whole split lives in memory as uint8 (47 MB for train); `tensors()` gives it as two
    batched tensors for the fast paths (evaluation, calibration) that need no DataLoader.
    """

    classes = CLASSES

    def __init__(self, split: str = "train", download: bool = False, search_dirs=None):
        _split_files(split)
        check_flag(download, "download")
        if download:
            download_raw()
        images_path, labels_path = find_raw_files(split, search_dirs)
        self.split = split
        self.images = read_idx(images_path)
        self.targets = read_idx(labels_path).long()
        _check_contents(self.images, self.targets, split, images_path, labels_path)
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


def _check_contents(images, targets, split: str, images_path: Path, labels_path: Path) -> None:
    """Well-formed IDX files can still be the wrong ones: other shapes, or labels outside 0..9."""
    count = SPLITS[split][2]
    if images.shape != (count, 28, 28) or targets.shape != (count,):
        raise DataFileError(f"{images_path.parent} holds {tuple(images.shape)} images and "
                            f"{tuple(targets.shape)} labels for the {split} split, expected "
                            f"({count}, 28, 28) and ({count},); the files are not Fashion-MNIST's. "
                            f"{replace_advice(images_path)}")
    if len(targets) and int(targets.max()) >= len(CLASSES):
        raise DataFileError(f"{labels_path} has label {int(targets.max())}, but Fashion-MNIST's labels are 0 "
                            f"to {len(CLASSES) - 1}; the file is not Fashion-MNIST's. {replace_advice(labels_path)}")


def fashion_mnist(split: str = "train", download: bool = False) -> FashionMNIST:
    """The `split` ("train" or "test") of Fashion-MNIST; see the module docstring for where from."""
    return FashionMNIST(split, download=download)


def _check_count(n, size: int, what: str = "n") -> None:
    """A number of images is a whole number from 1 to the data set's size."""
    check_whole(n, what, 1, size, example=min(256, size))


def deterministic_subset(dataset: Dataset, n: int, seed: int = 0) -> Subset:
    """`n` items drawn without replacement by a seeded generator: the same items on every machine."""
    if not isinstance(dataset, Dataset) or not hasattr(dataset, "__len__"):
        raise BadInputError(f"dataset must be a torch Dataset with a length (e.g. data.fashion_mnist('train')), "
                            f"not {kind_of(dataset)}; wrap tensors in torch.utils.data.TensorDataset.")
    _check_count(n, len(dataset))
    check_whole(seed, "seed")
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:n]
    return Subset(dataset, indices.tolist())


def calibration_subset(n: int = 2048, seed: int = 0) -> Subset:
    """`n` training images for calibrating observers (never the test images we report on)."""
    _check_count(n, SPLITS["train"][2])  # before reading 60,000 images
    check_whole(seed, "seed")
    return deterministic_subset(fashion_mnist("train"), n, seed)


def evaluation_subset(n: int = 10_000, seed: int = 0) -> Dataset:
    """`n` test images; the whole test split when n is 10,000."""
    _check_count(n, SPLITS["test"][2])
    check_whole(seed, "seed")
    test = fashion_mnist("test")
    return test if n == len(test) else deterministic_subset(test, n, seed)


def loader(dataset: Dataset, batch_size: int = 256, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A single-process DataLoader (the data is in memory; worker processes only cost time here)."""
    if not isinstance(dataset, Dataset):
        raise BadInputError(f"loader takes a torch Dataset (e.g. data.calibration_subset(256)), not "
                            f"{kind_of(dataset)}: a DataLoader over a tuple (images, labels) would batch the "
                            "tuple, not the images. Wrap tensors in torch.utils.data.TensorDataset(images, labels).")
    check_whole(batch_size, "batch_size", 1, example=256,
                why=" (None would silently yield single images without a batch dimension)")
    check_flag(shuffle, "shuffle")
    check_whole(seed, "seed")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def download_raw(root: Path | None = None) -> Path:
    """Download the raw files with torchvision into ROOT/FashionMNIST/raw/ (needs the internet).

    ROOT defaults to QLIB_DATA's folder when that is set (it is searched in that layout too), else data/.
    """
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    root = _download_root() if root is None else as_path(root, "root")
    for train in (True, False):
        TorchvisionFashionMNIST(root=str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


def _download_root() -> Path:
    return env_data_folder() or DATA_DIR


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.data", description=__doc__.splitlines()[0])
    parser.add_argument("--download", action="store_true", help="download with torchvision if missing")
    args = parser.parse_args(argv)
    if args.download:
        try:
            find_raw_files("train"), find_raw_files("test")
        except DataNotFoundError:
            print(f"Downloading Fashion-MNIST into {_download_root() / 'FashionMNIST' / 'raw'} ...")
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
