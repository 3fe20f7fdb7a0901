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
