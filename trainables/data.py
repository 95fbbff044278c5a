"""Datasets as whole tensors: every trial holds its data on its device and batches by indexing.

All inputs are float32 in [0, 1], shape N x C x H x W; no normalisation is baked in, so an
L-infinity budget means the same thing for every dataset and model.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from trainables.names import DATASETS

# The digits split is part of the dataset's definition, not a sweep setting: every trial of
# every sweep sees the same 75/25 stratified split.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


MNIST_ROOT_ENV = "SATSWEEP_MNIST_ROOT"


def default_mnist_root() -> Path:
    """An offline torchvision MNIST root for tests and benchmarks: $SATSWEEP_MNIST_ROOT, else
    `data/mnist` in the checkout (docs/data.md says how to fill it)."""
    checkout = Path(__file__).resolve().parents[1]
    return Path(os.environ.get(MNIST_ROOT_ENV) or checkout / "data" / "mnist")


class DatasetNotFoundError(RuntimeError):
    """The dataset is not on disk and may not be downloaded."""


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(self.y_train.max().item()) + 1

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
        )


def fixed_subset(n: int, size: int, seed: int) -> torch.Tensor:
    """The first `size` points of a seeded permutation of range(n), sorted: identical for
    every trial, and a larger subset with the same seed always contains a smaller one."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: min(size, n)].sort().values


SPLIT_SALT = 7919  # the halves are drawn apart from the subset itself, from the same seed


def selection_points(n: int, seed: int) -> torch.Tensor:
    """Which of the n evaluation points may choose a trial (True: the selection points, for
    the selection rule, the audit's ranking and ASHA) and which report the chosen trial's figure
    (False: the report points): a seeded half of them, the same for every trial of a sweep, so
    a champion's reported worst case comes from points that took no part in choosing it."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + SPLIT_SALT))
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[order[: (n + 1) // 2]] = True
    return chosen


def load_dataset(name: str, data_dir: str | None, download: bool) -> Dataset:
    """A dataset on the CPU as float32 tensors in [0, 1] and int64 labels, read from disk once
    per worker process: Ray reuses a worker for the sweep's next trial or audit, and the
    tensors are never written to (batches are indexed copies), so the next one shares them."""
    return _load_once(name, str(data_dir) if data_dir is not None else None, download)


@lru_cache(maxsize=2)
def _load_once(name: str, data_dir: str | None, download: bool) -> Dataset:
    if name == "digits":
        return _load_digits()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is None:
        raise DatasetNotFoundError(
            f"dataset {name!r} needs dataset.data_dir: set it to the folder that holds (or should "
            "receive) the torchvision files"
        )
    return _load_torchvision(name, Path(data_dir), download)


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # grey levels 0..16
    y = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(),
        test_size=DIGITS_TEST_FRACTION,
        stratify=y.numpy(),
        random_state=DIGITS_SPLIT_SEED,
    )
    return Dataset("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx])


# Decoded datasets are kept once per node as a tensor file that every worker maps into memory
# (`torch.load(mmap=True)`): decoding the MNIST subset takes 1 to 2 s per process, mapping the
# cached tensors a fraction of that. The file name carries a fingerprint of the source files
# (path, size, modification time), so a changed or replaced dataset is decoded afresh.
CACHE_ENV = "SATSWEEP_DATA_CACHE"
SOURCE_FOLDER = {
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "cifar10": "cifar-10-batches-py",
}


def cache_dir() -> Path:
    """$SATSWEEP_DATA_CACHE, else a folder of this user's in the node's temp folder (another
    user's files are never mapped)."""
    user = getattr(os, "getuid", lambda: "user")()
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / f"satsweep-data-{user}")


def cache_file(name: str, root: Path) -> Path | None:
    """Where this dataset's decoded tensors are cached; None when its files are not there."""
    source = root / SOURCE_FOLDER[name]
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else []
    if not files:
        return None
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    digest = hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]
    return cache_dir() / f"{name}-{digest}.pt"


def _from_cache(name: str, path: Path | None) -> Dataset | None:
    if path is None or not path.exists():
        return None
    try:
        tensors = torch.load(path, weights_only=True, mmap=True)
        return Dataset(name, *(tensors[k] for k in ("x_train", "y_train", "x_test", "y_test")))
    except Exception:  # a damaged cache file is only a missed shortcut: decode again
        return None


def _to_cache(data: Dataset, path: Path | None) -> None:
    """Written atomically (temp file, then rename), so a reader never maps half a file; a
    cache that cannot be written costs the next process a decode, nothing else."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tensors = {"x_train": data.x_train, "y_train": data.y_train,
                   "x_test": data.x_test, "y_test": data.y_test}  # fmt: skip
        torch.save(tensors, tmp)
        os.replace(tmp, path)
    except OSError:
        pass


def _load_torchvision(name: str, root: Path, download: bool) -> Dataset:
    path = cache_file(name, root)
    cached = _from_cache(name, path)
    if cached is not None:
        return cached
    data = _decode_torchvision(name, root, download)
    # the fingerprint walks and stats the source files: redo it only if a download made them
    _to_cache(data, path or cache_file(name, root))
    return data


def _decode_torchvision(name: str, root: Path, download: bool) -> Dataset:
    from torchvision import datasets

    cls = {
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
    }[name]
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except Exception as err:  # missing, truncated, corrupt or unwritable: all one answer
        raise DatasetNotFoundError(
            f"dataset {name!r} cannot be loaded from {root.resolve()} "
            f"({type(err).__name__}: {err}). Fix: put intact torchvision files there "
            "(docs/data.md), point dataset.data_dir at them, or set dataset.download: true on "
            "a machine with internet access and a writable data_dir"
        ) from None
    return Dataset(name, *_as_tensors(train), *_as_tensors(test))


def _as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.as_tensor(ds.data)
    # MNIST-like data is N x H x W; CIFAR is N x H x W x C (both uint8)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    x = images.contiguous().to(torch.float32) / 255.0
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    return x, y
