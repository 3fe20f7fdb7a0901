"""The distorted-digits task: scikit-learn's bundled digits, each image distorted once.

1,797 8x8 digits (no download) are split by image, with a fixed seed, into
train, validation and test, and every image is distorted deterministically
(rotation, scaling, shift and pixel noise), so that the task is hard enough
for the cell to matter. Validation and test hold several distorted copies of
each of their digits, which averages out which few images a network happens
to get right. Everything is normalised with the training split's statistics.

One definition for two users: the learning-curve table of the replay benchmark
(kubenas.bench.curves, `make_task(TASK)`) and the trainer's dataset
`training.dataset.name: distorted-digits` (`load`), so that a search trains on
exactly the images the table was measured on. The split is the task's, the
same whatever the training seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from kubenas.errors import DatasetError
from kubenas.training.datasets import DISTORTED_DIGITS, MIN_SPLIT_IMAGES, Augment, Splits


@dataclass(frozen=True)
class CurveTask:
    """The images: how many of each split, and how they are distorted."""

    train_images: int = 500
    val_images: int = 600  # distinct digits; each appears `eval_copies` times
    test_images: int = 697
    eval_copies: int = 3
    train_copies: int = 1  # distortions of each training digit (more steps per epoch)
    size: int = 8  # side of the (resampled) image
    rotation: float = 0.0  # degrees, uniform in +-rotation
    scale: float = 0.0  # uniform in 1 +- scale
    shift: float = 0.0  # pixels, uniform in +-shift
    noise: float = 0.0  # Gaussian pixel noise (images in [0, 1])
    seed: int = 0


# The task of training.dataset.name distorted-digits, and of benchmarks/data/digits-curves.csv.
TASK = CurveTask(train_images=700, val_images=550, test_images=547, eval_copies=4,
                 rotation=15.0, scale=0.1, shift=0.5, noise=0.1, seed=0)


@dataclass
class TaskData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def to(self, device: str | torch.device) -> "TaskData":
        return TaskData(*(t.to(device) for t in (self.train_x, self.train_y, self.val_x, self.val_y,
                                                  self.test_x, self.test_y)))


def _distort(images: torch.Tensor, task: CurveTask, gen: torch.Generator) -> torch.Tensor:
    """One random affine distortion and noise per image: (n, 1, 8, 8) -> (n, 1, size, size)."""
    n = len(images)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(task.rotation)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * task.scale
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * task.shift * 2 / task.size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, task.size, task.size], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if task.noise:
        out = out + task.noise * torch.randn(out.shape, generator=gen)
    return out


def distorted_splits(task: CurveTask) -> TaskData:
    """The three splits, distorted but not normalised (pixels in [0, 1] plus the noise)."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    y = torch.from_numpy(digits.target.astype(np.int64))
    needed = task.train_images + task.val_images + task.test_images
    if needed > len(x):
        raise ValueError(f"task: {needed} images asked for; digits has {len(x)}")
    gen = torch.Generator().manual_seed(task.seed)
    order = torch.randperm(len(x), generator=gen)
    a, b = task.train_images, task.train_images + task.val_images
    parts = {"train": order[:a], "val": order[a:b], "test": order[b:needed]}
    out = []
    for name, idx in parts.items():  # in this order: each split's distortions continue the generator
        copies = task.train_copies if name == "train" else task.eval_copies
        xs = x[idx].repeat(copies, 1, 1, 1)
        out += [_distort(xs, task, gen), y[idx].repeat(copies)]
    return TaskData(*out)


def training_statistics(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the training images, over all pixels (the images have one channel)."""
    return train_x.mean(), train_x.std().clamp_min(1e-6)


def make_task(task: CurveTask) -> TaskData:
    """The three splits, distorted and normalised with the training statistics."""
    raw = distorted_splits(task)
    mean, std = training_statistics(raw.train_x)
    return TaskData((raw.train_x - mean) / std, raw.train_y, (raw.val_x - mean) / std, raw.val_y,
                    (raw.test_x - mean) / std, raw.test_y)


def _normalisation(raw: TaskData, mean: Optional[list[float]],
                   std: Optional[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's mean and std (one value each: the images are grey), else the task's own."""
    if mean is None or std is None:
        return training_statistics(raw.train_x)
    if len(mean) != 1 or len(std) != 1:
        raise DatasetError(f"training.dataset.mean: {mean} is not accepted; dataset {DISTORTED_DIGITS} has 1 channel: "
                           "give 1 value (and 1 for std)")
    return torch.tensor(mean[0], dtype=torch.float32), torch.tensor(std[0], dtype=torch.float32)


def load(train_subset: Optional[int] = None, mean: Optional[list[float]] = None,
         std: Optional[list[float]] = None, augment: Optional[Augment] = None) -> Splits:
    """The trainer's splits: TASK's 700 training digits (the first `train_subset` of them when
    given) and its validation split (550 digits, 4 distortions each). Without a mean and std
    the images are normalised exactly as `make_task(TASK)` normalises them."""
    if train_subset is not None and train_subset < MIN_SPLIT_IMAGES:
        raise DatasetError(f"training.dataset.trainSubset: {train_subset} is not accepted; "
                           f"give at least {MIN_SPLIT_IMAGES} images")
    raw = distorted_splits(TASK)
    m, s = _normalisation(raw, mean, std)
    train_x, train_y = raw.train_x[:train_subset], raw.train_y[:train_subset]
    return Splits(name=DISTORTED_DIGITS, train_x=(train_x - m) / s, train_y=train_y, val_x=(raw.val_x - m) / s,
                  val_y=raw.val_y, num_classes=10, mirror_ok=False, mean=(float(m),), std=(float(s),),
                  augment=augment)


@dataclass
class TestImages:
    """The held-out test split as the trainer's final stage reads it: un-normalised images (the
    exported network normalises its inputs itself) and labels."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def dataset(self) -> torch.utils.data.Dataset:
        return torch.utils.data.TensorDataset(self.x, self.y)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


def load_test() -> TestImages:
    """TASK's test split (547 digits, 4 distortions each), never trained or validated on."""
    raw = distorted_splits(TASK)
    return TestImages(raw.test_x, raw.test_y)
