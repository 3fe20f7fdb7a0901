"""Users' own images: an ImageFolder tree of real PNG files (scikit-learn's digits, written by
benchmarks/make_digits_imagefolder.py) with corrupt files among them, trained through the
trainer's own code path; bad trees refused before a search, naming the field."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks import make_digits_imagefolder as make_digits
from kubenas.errors import DatasetError
from kubenas.spec import AugmentationSpec, DatasetSpec, TrainingSpec
from kubenas.training import load_dataset_spec, load_test_split, normalization, preflight_dataset, train_proxy
from kubenas.training.datasets import Augment
from kubenas.training.proxy import TrainConfig, _augment

torch.set_num_threads(1)

CELL = {"space": "nasbench201",
        "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"}
SIZE = 16  # small PNGs keep each test to seconds on one core
BAD_FILE_NAMES = {"truncated.png", "not-really.png", "notes.txt"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """train/ validation/ test/ of 200 digits, with three corrupt files in train/."""
    root = tmp_path_factory.mktemp("digits")
    written = make_digits.write_digits_imagefolder(root, size=SIZE, limit=200, corrupt=True)
    assert written.images == {"validation": 40, "test": 40, "train": 120}
    return root


def _spec(root: Path, **fields) -> DatasetSpec:
    return DatasetSpec.model_validate({"name": "imagefolder", "root": str(root), "resolution": SIZE, **fields})


def _copy(tree: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tree, tmp_path / "copy"))


@pytest.mark.parametrize("cache", [1024, 0], ids=["in-memory", "read-from-disk"])
def test_corrupt_files_are_skipped_counted_and_named_and_the_rest_loads(tree, caplog, cache):
    with caplog.at_level(logging.WARNING, logger="kubenas.datasets"):
        data = load_dataset_spec(_spec(tree, cacheLimitMiB=cache))
    assert data.streamed == (cache == 0)
    assert {Path(path).name for path, _ in data.skipped} == BAD_FILE_NAMES
    assert "skipped 3 of 163 files" in caplog.text and "truncated.png" in caplog.text
    assert data.num_train == 120 and data.num_classes == 10 and data.classes == [str(d) for d in range(10)]
    assert data.input_shape == (3, SIZE, SIZE)
    # Normalised with the training split's statistics, which normalization() reports alike.
    mean, std = normalization(_spec(tree, cacheLimitMiB=cache))
    assert mean == pytest.approx(data.mean, abs=1e-5) and std == pytest.approx(data.std, abs=1e-5)
    if not data.streamed:
        assert float(data.train_x.mean()) == pytest.approx(0.0, abs=1e-4)
        assert float(data.train_x.std()) == pytest.approx(1.0, abs=1e-2)


def test_a_trial_trains_on_the_tree_through_the_trainers_own_path(tree, tmp_path):
    import redis

    from kubenas.queue.keys import SearchKeys
    from kubenas.queue.messages import TrialMessage
    from kubenas_trainer.trainer import Trainer, TrainerOptions

    # No Redis is reached: _train is the trainer's whole training step (dataset, config, train_proxy).
    trainer = Trainer(redis.Redis(port=1, socket_connect_timeout=0.2), SearchKeys("ns", "s"),
                      TrainerOptions(consumer="t0", device="cpu", threads=1))
    training = TrainingSpec.model_validate({
        "epochs": 2, "channels": 4, "cellsPerStage": 1, "batchSize": 32, "learningRate": 0.1,
        "dataset": {"name": "imagefolder", "root": str(tree), "resolution": SIZE},
        "augmentation": {"randomCrop": True, "padding": 2, "cutout": 4}})

    class Claim:
        trial = TrialMessage(search="ns/s", trial_id="t-1", genotype=CELL, epochs=2, training=training)
        entry_id, attempt, reclaimed = "1-0", 1, False

    trainer._on_epoch = lambda claim, report: True  # the progress stream needs Redis
    outcome = trainer._train(Claim())
    assert outcome.status == "succeeded" and outcome.epochs == 2
    assert 0.0 <= outcome.reward <= 1.0 and outcome.cost["params"] > 0
    assert trainer._dataset.augment == Augment(padding=2, flip=False, cutout=4)


def test_a_tree_read_from_disk_learns_through_torchvision_transforms(tree):
    data = load_dataset_spec(_spec(tree, cacheLimitMiB=0),
                             augmentation=AugmentationSpec(randomCrop=True, padding=2, cutout=4))
    outcome = train_proxy(CELL, data, TrainConfig(epochs=5, channels=4, cells_per_stage=1, batch_size=16,
                                                  learning_rate=0.1, device="cpu"))
    assert outcome.status == "succeeded" and len(outcome.curve) == 5
    assert outcome.curve[-1].train_acc > 0.3  # guessing gets 0.1: the images and labels reach the network


def test_loader_workers_read_the_tree_in_separate_processes(tree):
    data = load_dataset_spec(_spec(tree, cacheLimitMiB=0, loaderWorkers=1),
                             augmentation=AugmentationSpec(horizontalFlip=True))
    outcome = train_proxy(CELL, data, TrainConfig(epochs=1, channels=4, cells_per_stage=1, batch_size=40,
                                                  device="cpu"))
    assert outcome.status == "succeeded" and outcome.curve[0].train_loss > 0


def test_the_held_out_test_split_is_un_normalised_rgb_and_never_trained_on(tree, tmp_path):
    test = load_test_split(_spec(tree))
    x, y = test.tensors()
    assert x.shape == (40, 3, SIZE, SIZE) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert test.classes == [str(d) for d in range(10)] and len(y) == 40
    # One tree split by fractions: the same test images whatever the seed, apart from train and validation.
    single = tmp_path / "single"
    make_digits.write_digits_imagefolder(single, size=SIZE, layout="single", limit=100)
    spec = _spec(single, testFraction=0.2, validationFraction=0.2)
    names = [sorted(p for p, _ in load_test_split(spec).dataset.samples) for _ in range(2)]
    assert names[0] == names[1] and len(names[0]) == 20
    for seed in (0, 1):
        data = load_dataset_spec(spec, seed=seed)
        assert data.num_train == 60 and len(data.val_x) == 20
    with pytest.raises(DatasetError, match="training.dataset.root: .* has no test split"):
        load_test_split(_spec(single))


def _jpeg_tree(root: Path) -> Path:
    """train/ validation/ test/ of random 40x40 JPEGs, two classes of six each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for part in ("train", "validation", "test"):
        for name in ("a", "b"):
            (root / part / name).mkdir(parents=True)
            for i in range(6):
                pixels = (rng.random((40, 40, 3)) * 255).astype("uint8")
                Image.fromarray(pixels).save(root / part / name / f"{i}.jpg")
    return root


def _cut(path: Path) -> None:
    """Cut a JPEG inside its image data: the header and Image.verify() still pass, decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 4 // 5])


def test_a_jpeg_cut_inside_its_image_data_is_a_skip_when_read_from_disk(tmp_path):
    root = _jpeg_tree(tmp_path / "jpegs")
    _cut(root / "test" / "a" / "0.jpg")
    _cut(root / "train" / "b" / "1.jpg")
    test = load_test_split(_spec(root))
    assert [Path(p).name for p, _ in test.skipped] == ["0.jpg"] and len(test.dataset) == 11
    x, y = test.tensors()  # every image the scan kept can be read
    assert len(x) == len(y) == 11
    data = load_dataset_spec(_spec(root, cacheLimitMiB=0))
    assert data.streamed and [Path(p).name for p, _ in data.skipped] == ["1.jpg"]
    assert len([data.train_set[i] for i in range(len(data.train_set))]) == 11


def test_augmentation_as_asked_crops_flips_and_cuts_out_a_square():
    x = torch.ones(4, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    out = _augment(x, False, gen, Augment(padding=0, flip=False, cutout=4))
    erased = (out == 0).all(dim=1).flatten(1).sum(1)
    assert ((erased > 0) & (erased <= 16)).all()  # a 4x4 square, clipped where it crosses the border
    shifted = _augment(x, False, gen, Augment(padding=4))
    assert shifted.shape == x.shape and bool((shifted == 0).any())  # padding shows at the shifted edge
    ramp = torch.arange(16.0).expand(1, 1, 16, 16).repeat(64, 1, 1, 1)
    flipped = _augment(ramp, False, gen, Augment(flip=True))
    assert 0 < int((flipped[:, 0, 0, 0] == 15).sum()) < 64  # some mirrored, some not


def test_the_preflight_names_the_field_for_trees_no_search_can_use(tree, tmp_path):
    preflight_dataset(_spec(tree))  # the good tree passes, corrupt files and all
    with pytest.raises(DatasetError, match=r"training.dataset.root: .*missing does not exist"):
        preflight_dataset(_spec(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="training.dataset.resolution: 16-pixel images are too small for the "
                                           "imagenet skeleton"):
        preflight_dataset(_spec(tree), skeleton="imagenet")

    empty = tmp_path / "empty"
    make_digits.write_digits_imagefolder(empty, size=SIZE, limit=60, empty_class=True)
    with pytest.raises(DatasetError, match=r"training.dataset.root: class directory .*train/empty has no image"):
        preflight_dataset(_spec(empty))

    differ = _copy(tree, tmp_path)
    shutil.rmtree(differ / "validation" / "7")
    with pytest.raises(DatasetError, match=r"training.dataset.root: the classes of .*validation differ .*"
                                           r"missing: \['7'\]"):
        preflight_dataset(_spec(differ))
    shutil.rmtree(differ / "validation")
    with pytest.raises(DatasetError, match=r"training.dataset.root: .*train exists but .*validation"):
        preflight_dataset(_spec(differ))

    flat = tmp_path / "flat"
    (flat / "a").mkdir(parents=True)
    (flat / "a" / "x.png").write_text("not a png")
    with pytest.raises(DatasetError, match="training.dataset.root"):
        preflight_dataset(_spec(flat))


def test_a_class_whose_every_file_is_unreadable_is_an_error_at_load_naming_the_field(tree, tmp_path):
    broken = _copy(tree, tmp_path)
    for png in (broken / "train" / "3").glob("*.png"):
        png.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="training.dataset.root: class 3 .* has no readable training image"):
        load_dataset_spec(_spec(broken))


def test_the_spec_refuses_imagefolder_fields_on_other_datasets_and_half_statistics():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="training.dataset.resolution: only imagefolder"):
        DatasetSpec.model_validate({"name": "digits", "resolution": 32})
    with pytest.raises(ValidationError, match="training.dataset.mean and training.dataset.std"):
        DatasetSpec.model_validate({"name": "imagefolder", "root": "/d", "mean": [0.5]})
    given = _spec(Path("/nowhere"), mean=[0.5], std=[0.25])
    assert normalization(given) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # no file read
