"""The distorted-digits dataset: the trainer's splits are the learning-curve table's task."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from kubenas.errors import DatasetError
from kubenas.spec import ArchitectureSearchSpec, DatasetSpec
from kubenas.training import load_dataset_spec, load_test_split, preflight_dataset
from kubenas.training.distorted_digits import TASK, distorted_splits, make_task, training_statistics

SPEC = DatasetSpec(name="distorted-digits")


@pytest.fixture(scope="module")
def bench_task():
    return make_task(TASK)


def test_the_trainer_sees_the_tables_images_bit_for_bit(bench_task):
    from kubenas.bench import curves

    assert curves.TASK is TASK and curves.make_task is make_task  # one definition for both
    for seed in (0, 7):  # the split is the task's, whatever the training seed
        data = load_dataset_spec(SPEC, seed=seed)
        assert data.train_x.shape == (700, 1, 8, 8) and data.val_x.shape == (550 * 4, 1, 8, 8)
        assert torch.equal(data.train_x, bench_task.train_x) and torch.equal(data.train_y, bench_task.train_y)
        assert torch.equal(data.val_x, bench_task.val_x) and torch.equal(data.val_y, bench_task.val_y)
    assert data.name == "distorted-digits" and data.num_classes == 10 and not data.mirror_ok


def test_the_recorded_normalisation_is_the_one_applied():
    raw = distorted_splits(TASK)
    data = load_dataset_spec(SPEC)
    mean, std = training_statistics(raw.train_x)
    assert data.mean == (float(mean),) and data.std == (float(std),)
    # What an exported network does with a raw image gives the training images back.
    assert torch.equal((raw.train_x - torch.tensor(data.mean)) / torch.tensor(data.std), data.train_x)
    # The table was measured on these images: a change to the task would make it another task.
    assert data.mean[0] == pytest.approx(0.29393163, rel=1e-6) and data.std[0] == pytest.approx(0.33174604, rel=1e-6)


def test_the_test_split_is_the_tables(bench_task):
    data = load_dataset_spec(SPEC)
    x, y = load_test_split(SPEC).tensors()
    assert x.shape == (547 * 4, 1, 8, 8) and torch.equal(y, bench_task.test_y)
    assert torch.equal((x - torch.tensor(data.mean)) / torch.tensor(data.std), bench_task.test_x)
    assert len(load_test_split(SPEC).dataset) == 547 * 4


def test_train_subset_takes_the_first_training_digits(bench_task):
    data = load_dataset_spec(DatasetSpec(name="distorted-digits", train_subset=100))
    assert torch.equal(data.train_x, bench_task.train_x[:100]) and torch.equal(data.val_x, bench_task.val_x)
    assert load_dataset_spec(DatasetSpec(name="distorted-digits", train_subset=5000)).train_x.shape[0] == 700


def test_bad_settings_are_refused_naming_the_field():
    with pytest.raises(ValidationError, match="training.dataset.validationFraction: 0.3 is not accepted with "
                                              "distorted-digits, whose split is fixed"):
        DatasetSpec(name="distorted-digits", validation_fraction=0.3)
    with pytest.raises(DatasetError, match="training.dataset.mean: .* has 1 channel"):
        load_dataset_spec(DatasetSpec(name="distorted-digits", mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2]))
    with pytest.raises(DatasetError, match="training.skeleton: 8-pixel images are too small for the imagenet"):
        preflight_dataset(SPEC, skeleton="imagenet")


def test_preflight_and_the_spec_accept_it():
    preflight_dataset(SPEC)
    preflight_dataset(DatasetSpec(name="distorted-digits", train_subset=64))
    spec = ArchitectureSearchSpec.model_validate({"searchSpace": {"type": "nasbench201"},
                                                  "training": {"dataset": {"name": "distorted-digits"}}})
    # The torch-free copies of its shape (spec, feasibility bound, controller) agree with the task.
    from kubenas.feasibility import DATASET_SHAPES
    from kubenas.spec import DATASET_RESOLUTIONS

    assert spec.training.dataset.image_size == DATASET_RESOLUTIONS["distorted-digits"] == TASK.size
    assert DATASET_SHAPES["distorted-digits"] == (1, 10)
    data = load_dataset_spec(DatasetSpec(name="distorted-digits", mean=[0.5], std=[0.25]))
    assert data.mean == (0.5,) and data.std == (0.25,)
    assert torch.equal(data.val_x, (distorted_splits(TASK).val_x - 0.5) / 0.25)
