"""Datasets load as [0, 1] float32 tensors with fixed splits; missing data gives a useful error."""

import pytest
import torch

from tests.conftest import MNIST10K
from trainables.data import DatasetNotFoundError, load_dataset


def test_digits_shape_range_and_split(digits):
    assert digits.x_train.shape[1:] == (1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert len(digits.y_train) + len(digits.y_test) == 1797
    assert len(digits.y_test) == pytest.approx(0.25 * 1797, abs=1)
    for x in (digits.x_train, digits.x_test):
        assert x.min() >= 0 and x.max() <= 1
    assert digits.x_train.max() == 1.0  # divided by 16, not by 255


def test_digits_split_is_fixed_and_stratified(digits):
    again = load_dataset("digits", None, False)
    assert torch.equal(digits.x_test, again.x_test) and torch.equal(digits.y_test, again.y_test)
    train_share = torch.bincount(digits.y_train) / len(digits.y_train)
    test_share = torch.bincount(digits.y_test) / len(digits.y_test)
    assert (train_share - test_share).abs().max() < 0.01


@pytest.mark.skipif(not MNIST10K.exists(), reason=f"MNIST subset not at {MNIST10K}")
def test_mnist_loads_offline_from_the_shared_subset():
    data = load_dataset("mnist", str(MNIST10K), download=False)
    assert data.x_train.shape == (8000, 1, 28, 28) and data.x_test.shape == (2000, 1, 28, 28)
    assert data.x_train.min() >= 0 and data.x_train.max() <= 1
    assert data.num_classes == 10


def test_missing_torchvision_data_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", str(tmp_path / "nowhere"), download=False)
    assert str(tmp_path / "nowhere") in str(err.value)
    assert "download: true" in str(err.value)


def test_torchvision_dataset_without_data_dir_is_refused():
    with pytest.raises(DatasetNotFoundError, match="data_dir"):
        load_dataset("fashion_mnist", None, download=False)


@pytest.mark.skipif(not MNIST10K.exists(), reason=f"MNIST subset not at {MNIST10K}")
def test_decoded_mnist_is_cached_once_per_node_and_redone_when_the_files_change(
    tmp_path, monkeypatch
):
    """The cache returns exactly the decoded tensors; a changed source file gets a new cache
    entry, and a damaged cache file is decoded around, never trusted."""
    import shutil

    from trainables.data import CACHE_ENV, _decode_torchvision, _load_torchvision, cache_file

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = tmp_path / "mnist"
    shutil.copytree(MNIST10K, root)
    decoded = _decode_torchvision("mnist", root, False)
    first = _load_torchvision("mnist", root, False)  # decodes, writes the cache
    path = cache_file("mnist", root)
    assert path.exists()
    again = _load_torchvision("mnist", root, False)  # maps the cache
    for a, b, c in zip(decoded.__dict__.values(), first.__dict__.values(),
                       again.__dict__.values(), strict=True):  # fmt: skip
        assert a == b == c if isinstance(a, str) else torch.equal(a, b) and torch.equal(a, c)
    touched = next(p for p in (root / "MNIST").rglob("*") if p.is_file())
    touched.write_bytes(touched.read_bytes())  # same bytes, new modification time
    assert cache_file("mnist", root) != path
    new_path = cache_file("mnist", root)
    _load_torchvision("mnist", root, False)
    new_path.write_bytes(b"not a tensor file")
    damaged = _load_torchvision("mnist", root, False)
    assert torch.equal(damaged.x_test, decoded.x_test)
