import threading

import numpy as np
import pytest
import torch

from kubenas.errors import DatasetError
from kubenas.training import TrainConfig, TrialInterrupted, load_dataset, train_proxy

torch.set_num_threads(2)
GOOD_CELL = {"space": "nasbench201",
             "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"}
TINY = TrainConfig(epochs=3, batch_size=64, learning_rate=0.05, channels=8, cells_per_stage=1, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", validation_fraction=0.2, seed=0)


def test_digits_is_real_offline_data(digits):
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.train_x) + len(digits.val_x) == 1797
    assert digits.num_classes == 10
    assert abs(float(digits.train_x.mean())) < 1e-4  # normalised with train statistics


def test_short_training_is_clearly_better_than_chance(digits):
    reports = []
    outcome = train_proxy(GOOD_CELL, digits, TINY, on_epoch=lambda r: reports.append(r) or True)
    assert outcome.status == "succeeded"
    assert outcome.reward > 0.6  # chance is 0.1
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert outcome.curve[-1].val_acc == outcome.reward
    assert outcome.parameters > 0 and outcome.multiply_adds > 0


def test_training_is_reproducible_with_a_seed(digits):
    cfg = TrainConfig(epochs=1, channels=4, cells_per_stage=1, device="cpu", seed=3)
    a, b = train_proxy(GOOD_CELL, digits, cfg), train_proxy(GOOD_CELL, digits, cfg)
    assert a.curve[0].train_loss == b.curve[0].train_loss
    assert a.reward == b.reward


def test_nan_loss_ends_the_trial_with_reward_zero_and_a_reason(digits):
    outcome = train_proxy(GOOD_CELL, digits, TrainConfig(epochs=2, channels=4, cells_per_stage=1,
                                                          learning_rate=1e8, device="cpu"))
    assert outcome.status == "diverged"
    assert outcome.reward == 0.0
    assert "loss became" in outcome.reason


def test_stop_signal_between_epochs(digits):
    outcome = train_proxy(GOOD_CELL, digits, TINY, on_epoch=lambda r: False)
    assert outcome.status == "stopped" and len(outcome.curve) == 1


def test_interrupt_raises_between_batches(digits):
    event = threading.Event()
    event.set()
    with pytest.raises(TrialInterrupted):
        train_proxy(GOOD_CELL, digits, TINY, interrupt=event)


def test_genotype_hyperparameters_override_the_defaults(digits):
    genotype = {**GOOD_CELL, "hparams": {"epochs": 1, "batchSize": 32}}
    from kubenas.spaces import build_space
    space = build_space({"type": "nasbench201", "hyperparameters": [
        {"name": "epochs", "type": "int", "low": 1, "high": 3},
        {"name": "batchSize", "type": "categorical", "choices": [32, 64]}]})
    space.validate(genotype)
    outcome = train_proxy(genotype, digits, TINY)
    assert len(outcome.curve) == 1


def test_unknown_dataset_names_the_choices():
    with pytest.raises(DatasetError, match=r"training.dataset.name: 'imagenet' is not accepted; choose one of \["):
        load_dataset("imagenet")


def test_missing_cifar_files_give_one_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset cifar10: no usable files under .*download: true"):
        load_dataset("cifar10", root=tmp_path)


def test_npz_dataset_loads_and_checks_shapes(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    np.savez(good, x=rng.integers(0, 255, (40, 12, 12, 3), dtype=np.uint8), y=rng.integers(0, 4, 40))
    data = load_dataset("npz", root=good)
    assert data.input_shape == (3, 12, 12) and data.num_classes <= 4
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=rng.random((40, 12)), y=rng.integers(0, 4, 40))
    with pytest.raises(DatasetError, match=r"images must have shape"):
        load_dataset("npz", root=bad)
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, x=rng.random((40, 8, 8)), y=rng.integers(0, 4, 39))
    with pytest.raises(DatasetError, match=r"labels must have shape \(40,\)"):
        load_dataset("npz", root=mismatch)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}] * 20, dtype=object), y=np.zeros(20, dtype=int))
    with pytest.raises(DatasetError, match="without pickled objects"):
        load_dataset("npz", root=pickled)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DatasetError, match="npz"):
        load_dataset("npz", root=truncated)


# --- ScheduledDropPath ------------------------------------------------------------------

def test_drop_path_rises_every_step_and_with_the_cells_depth():
    from torch.nn.modules.module import register_module_forward_pre_hook

    from kubenas.nn.networks import Network

    data = load_dataset("digits", train_subset=64, seed=0)
    seen = []

    def record(module, inputs):
        if isinstance(module, Network) and module.training:
            seen.append([cell.drop_prob for cell in module.cells])

    cfg = TrainConfig(epochs=2, batch_size=16, channels=4, cells_per_stage=1, device="cpu", drop_path=0.4,
                      augment=False)
    handle = register_module_forward_pre_hook(record)
    try:
        train_proxy(GOOD_CELL, data, cfg)
    finally:
        handle.remove()
    steps = 2 * 64 // 16
    assert len(seen) == steps
    cells = len(seen[0])
    for step, probs in enumerate(seen):  # the reference: p * (step / total) * (cell + 1) / cells
        assert probs == pytest.approx([0.4 * step / steps * (i + 1) / cells for i in range(cells)])


# --- hyperparameters a genotype carries -------------------------------------------------

@pytest.mark.parametrize("hparams, message", [
    ({"epochs": float("inf")}, "genotype.hparams.epochs: Input should be a valid integer (got inf)"),
    ({"batchSize": 0}, "genotype.hparams.batchSize: Input should be greater than or equal to 1 (got 0)"),
    ({"learningRate": float("nan")}, "genotype.hparams.learningRate: Input should be a finite number"),
    ({"learningRate": -0.1}, "genotype.hparams.learningRate: Input should be greater than 0"),
    ({"dropPath": 1.0}, "genotype.hparams.dropPath: Input should be less than 1"),
])
def test_hyperparameters_that_cannot_train_are_refused_before_training(digits, hparams, message):
    from kubenas.errors import InvalidGenotype

    with pytest.raises(InvalidGenotype) as err:
        train_proxy({**GOOD_CELL, "hparams": hparams}, digits, TINY)
    assert message in str(err.value)


# --- splits -----------------------------------------------------------------------------

@pytest.mark.parametrize("fraction, message", [
    (0.0005, "validationFraction: 0.0005 of the 1797 images of dataset digits leaves 1 validation images; "
             "at least 5 are needed"),
    (0.999, "leaves 2 training images; at least 5 are needed"),
    (1.5, "validationFraction: 1.5 is not accepted"),
    (float("nan"), "validationFraction: nan is not accepted"),
])
def test_a_split_that_leaves_too_few_images_is_refused_with_the_count(fraction, message):
    with pytest.raises(DatasetError) as err:
        load_dataset("digits", validation_fraction=fraction)
    assert message in str(err.value)


# --- the pre-flight check ---------------------------------------------------------------

def _spec(**fields):
    from kubenas.spec import DatasetSpec

    return DatasetSpec.model_validate(fields)


def _write_npz_header_only(path, shape, dtype="|u1"):
    """An .npz whose x has a valid header and no data: only a lazy check passes it."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    labels = io.BytesIO()
    np.save(labels, np.zeros(shape[0], dtype=np.int64))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue())
        archive.writestr("y.npy", labels.getvalue())


def test_preflight_accepts_what_trains_without_loading_it(tmp_path):
    from kubenas.training.datasets import preflight_dataset

    preflight_dataset(_spec(name="digits"))
    good = tmp_path / "good.npz"
    rng = np.random.default_rng(0)
    np.savez(good, x=rng.integers(0, 255, (40, 12, 12, 3), dtype=np.uint8), y=rng.integers(0, 4, 40))
    preflight_dataset(_spec(name="npz", root=str(good)))
    # A header that promises 100,000 images with no data behind it: the check reads headers only.
    lazy = tmp_path / "lazy.npz"
    _write_npz_header_only(lazy, (100_000, 32, 32, 3))
    preflight_dataset(_spec(name="npz", root=str(lazy)))
    with pytest.raises(DatasetError):
        load_dataset("npz", root=lazy)
    cifar = tmp_path / "cifar"
    (cifar / "cifar-10-batches-py").mkdir(parents=True)
    for i in range(1, 6):
        (cifar / "cifar-10-batches-py" / f"data_batch_{i}").write_bytes(b"")
    preflight_dataset(_spec(name="cifar10", root=str(cifar)))
    preflight_dataset(_spec(name="cifar100", root=str(tmp_path / "later"), download=True))


def test_preflight_refuses_what_would_fail_every_trial(tmp_path):
    from kubenas.training.datasets import preflight_dataset

    rng = np.random.default_rng(0)
    text = tmp_path / "notes.npz"
    text.write_text("not a zip archive")
    lacking = tmp_path / "lacking.npz"
    np.savez(lacking, x=rng.random((40, 8, 8)))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}] * 20, dtype=object), y=np.zeros(20, dtype=int))
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=rng.random((40, 12)), y=rng.integers(0, 4, 40))
    tiny = tmp_path / "tiny.npz"
    np.savez(tiny, x=rng.random((8, 8, 8)), y=rng.integers(0, 4, 8))
    cases = [
        (_spec(name="npz", root=str(tmp_path / "missing.npz")), "training.dataset.root: .*missing.npz does not exist"),
        (_spec(name="npz"), "training.dataset.root: dataset npz needs the path of an .npz file"),
        (_spec(name="npz", root=str(tmp_path)), "is a directory; dataset npz needs an .npz file"),
        (_spec(name="npz", root=str(text)), "notes.npz is not an .npz archive"),
        (_spec(name="npz", root=str(lacking)), r"lacks arrays \['y'\]"),
        (_spec(name="npz", root=str(pickled)), "without pickled objects"),
        (_spec(name="npz", root=str(flat)), "images must have shape"),
        (_spec(name="npz", root=str(tiny)), "dataset npz: only 8 images; at least 10 are needed"),
        (_spec(name="cifar10"), "training.dataset.root: dataset cifar10 needs a root"),
        (_spec(name="cifar10", root=str(tmp_path)), r"no usable files under .* \(missing cifar-10-batches-py/"
                                                    r"data_batch_1\).*download: true"),
        (_spec(name="cifar100", root=str(text)), "is a file; dataset cifar100 needs a directory"),
        (_spec(name="digits", validationFraction=0.0005), "leaves 1 validation images"),
    ]
    for spec, message in cases:
        with pytest.raises(DatasetError, match=message):
            preflight_dataset(spec)


# --- a search with blocks: 2, down the trainer's path -----------------------------------

def test_a_blocks_2_search_trains_through_the_trainers_build_path():
    """What a trainer does with a trial of a `blocks: 2` search (trainer.py `_train`): the
    genotype arrives as JSON in a TrialMessage, is validated by `space_of` and trained."""
    from kubenas.queue.messages import TrialMessage
    from kubenas.spaces import build_space, space_of
    from kubenas.spec import SearchSpaceSpec, TrainingSpec

    space = build_space(SearchSpaceSpec(type="nasnet", blocks=2))
    genotype = space.sample(__import__("random").Random(4))
    trial = TrialMessage(search="s", trial_id="t-1", genotype=genotype, epochs=1,
                         training=TrainingSpec.model_validate({"channels": 4, "cellsPerStage": 1}))
    trial = TrialMessage.model_validate_json(trial.model_dump_json())
    checked = space_of(trial.genotype).validate_architecture(trial.genotype)
    t = trial.training
    data = load_dataset("digits", train_subset=128, seed=0)
    outcome = train_proxy(checked, data, TrainConfig(epochs=trial.epochs, batch_size=t.batch_size,
                                                       channels=t.channels, cells_per_stage=t.cells_per_stage,
                                                       device="cpu"))
    assert outcome.status == "succeeded" and len(outcome.curve) == 1 and outcome.parameters > 0


def test_a_resumed_trial_counts_the_training_time_before_its_checkpoint():
    """trainingSeconds is the trial's training time: a trial resumed from its checkpoint adds the
    seconds the checkpoint carries; a checkpoint without them (an older one) adds none."""
    from kubenas.training.checkpoints import CheckpointInvalid

    data = load_dataset("digits", train_subset=128, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=32, channels=4, cells_per_stage=1, device="cpu", seed=5)
    saved = []
    train_proxy(GOOD_CELL, data, cfg, on_checkpoint=saved.append, on_epoch=lambda report: report.epoch < 1)
    checkpoint = next(s for s in saved if s.epoch == 1 and not s.step)
    assert checkpoint.progress["train_seconds"] > 0
    checkpoint.progress["train_seconds"] = 1000.0  # as if epoch 1 had taken that long
    assert train_proxy(GOOD_CELL, data, cfg, start=checkpoint).seconds > 1000.0
    del checkpoint.progress["train_seconds"]
    assert train_proxy(GOOD_CELL, data, cfg, start=checkpoint).seconds < 1000.0
    checkpoint.progress["train_seconds"] = True
    with pytest.raises(CheckpointInvalid, match="train_seconds True"):
        train_proxy(GOOD_CELL, data, cfg, start=checkpoint)
