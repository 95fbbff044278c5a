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
