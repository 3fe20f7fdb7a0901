"""Datasets as in-memory tensors, split into train and validation.

Proxy tasks are small enough to live in memory (on the GPU where it fits),
which removes the data loader from the hot loop. Every failure is a
DatasetError naming the dataset, the problem and the fix.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from kubenas.errors import DatasetError


@dataclass
class Splits:
    name: str
    train_x: torch.Tensor  # (N, C, H, W) float32, normalised
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    mirror_ok: bool  # whether horizontal flips keep the label (not for digits)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def _to_tensor(images: np.ndarray, labels: np.ndarray, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,H,W,C) or (N,C,H,W) or (N,H,W) images and (N,) labels -> float NCHW and int64."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DatasetError(f"dataset {name}: images must have shape (N,H,W), (N,H,W,C) or (N,C,H,W); got {images.shape}")
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.shape[1] not in (1, 3):
        raise DatasetError(f"dataset {name}: images need 1 or 3 channels; got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(f"dataset {name}: labels must have shape ({len(images)},); got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise DatasetError(f"dataset {name}: labels must be non-negative integers; got dtype {labels.dtype}")
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), torch.from_numpy(labels.astype(np.int64))


def _digits(root: Optional[Path], download: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target, False


def _cifar(which: str) -> Callable[[Optional[Path], bool], tuple[np.ndarray, np.ndarray, bool]]:
    def load(root: Optional[Path], download: bool) -> tuple[np.ndarray, np.ndarray, bool]:
        from torchvision import datasets

        cls = datasets.CIFAR10 if which == "cifar10" else datasets.CIFAR100
        if root is None:
            raise DatasetError(f"dataset {which}: training.dataset.root is required (a directory holding the torchvision files)")
        try:
            ds = cls(str(root), train=True, download=download)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            hint = "" if download else "; set training.dataset.download: true where the network reaches the dataset's host"
            raise DatasetError(f"dataset {which}: no usable files under {root} ({exc}){hint}") from None
        except OSError as exc:
            raise DatasetError(f"dataset {which}: could not fetch or read it under {root}: {exc}") from None
        return ds.data.astype(np.float32) / 255.0, np.asarray(ds.targets), True

    return load


def _npz(path: Optional[Path], download: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """Bring your own data: an .npz with arrays `x` (images) and `y` (labels); no pickle."""
    if path is None or not path.is_file():
        raise DatasetError(f"dataset npz: training.dataset.root must name an .npz file; {path} is not a file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise DatasetError(f"dataset npz: {path} lacks arrays {sorted(missing)}; it has {archive.files}")
            images, labels = archive["x"], archive["y"]
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"dataset npz: {path} is not a readable .npz without pickled objects: {exc}") from None
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    return images, labels, False


DATASETS: dict[str, Callable[[Optional[Path], bool], tuple[np.ndarray, np.ndarray, bool]]] = {
    "digits": _digits,
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "npz": _npz,
}


def load_dataset(name: str, root: str | Path | None = None, download: bool = False,
                 validation_fraction: float = 0.2, train_subset: int | None = None, seed: int = 0) -> Splits:
    """Load `name`, hold out a seeded validation split, normalise per channel with train statistics."""
    if name not in DATASETS:
        raise DatasetError(f"training.dataset.name: {name!r} is not accepted; choose one of {sorted(DATASETS)}")
    if not 0.0 < validation_fraction < 1.0:
        raise DatasetError(f"training.validationFraction: {validation_fraction} must be between 0 and 1")
    images, labels, mirror_ok = DATASETS[name](Path(root) if root else None, download)
    x, y = _to_tensor(np.asarray(images), np.asarray(labels), name)
    if len(x) < 10:
        raise DatasetError(f"dataset {name}: only {len(x)} images; at least 10 are needed")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(len(x) * validation_fraction)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    train_x, val_x = x[train_idx], x[val_idx]
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return Splits(
        name=name,
        train_x=(train_x - mean) / std,
        train_y=y[train_idx],
        val_x=(val_x - mean) / std,
        val_y=y[val_idx],
        num_classes=int(y.max()) + 1,
        mirror_ok=mirror_ok,
    )
