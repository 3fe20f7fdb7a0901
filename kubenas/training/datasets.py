"""Datasets as in-memory tensors, split into train and validation.

Proxy tasks are small enough to live in memory (on the GPU where it fits),
which removes the data loader from the hot loop. Every failure is a
DatasetError naming the dataset, the problem and the fix. The one exception:
an imagefolder dataset above its cache limit is read from disk each epoch
(kubenas/training/imagefolder.py); its Splits hold torch Datasets instead.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch

from kubenas.errors import DatasetError

if TYPE_CHECKING:
    from kubenas.spec import AugmentationSpec, DatasetSpec

# Neither side of a split may be smaller: a reward measured on fewer images is noise.
MIN_SPLIT_IMAGES = 5
# The dataset of kubenas/training/distorted_digits.py (loaded there: it has its own fixed split).
DISTORTED_DIGITS = "distorted-digits"


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation, resolved from training.augmentation."""

    padding: int = 0  # random crop after padding by this many pixels; 0: none
    flip: bool = False  # horizontal flips
    cutout: int = 0  # side of the square erased; 0: none

    @classmethod
    def of(cls, spec: Optional["AugmentationSpec"]) -> Optional["Augment"]:
        if spec is None:
            return None  # the dataset's default
        return cls(padding=spec.padding if spec.random_crop else 0, flip=spec.horizontal_flip, cutout=spec.cutout)


@dataclass
class Splits:
    name: str
    train_x: Optional[torch.Tensor]  # (N, C, H, W) float32, normalised; None when streamed (train_set)
    train_y: Optional[torch.Tensor]  # (N,) int64
    val_x: Optional[torch.Tensor]
    val_y: Optional[torch.Tensor]
    num_classes: int
    mirror_ok: bool  # whether horizontal flips keep the label (not for digits)
    # Per-channel statistics of the [0, 1] (or raw npz) inputs that normalised the images.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    augment: Optional[Augment] = None  # None: the default translation (and flips where mirror_ok)
    classes: Optional[list[str]] = None  # class names by label (imagefolder)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable files left out: (path, why)
    # Streamed (imagefolder above its cache limit): batches come from a DataLoader over these.
    train_set: Any = None
    val_set: Any = None
    loader_workers: int = 0
    image_shape: Optional[tuple[int, int, int]] = None

    @property
    def streamed(self) -> bool:
        return self.train_set is not None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        if self.image_shape is not None:
            return self.image_shape
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value,union-attr]

    @property
    def num_train(self) -> int:
        return len(self.train_set) if self.streamed else len(self.train_x)  # type: ignore[arg-type]

    def example(self) -> torch.Tensor:
        """One validation image as a batch of one (normalised), e.g. to time a forward pass."""
        if self.streamed:
            return self.val_set[0][0][None]
        return self.val_x[:1]  # type: ignore[index]


def _channels_last(name: str, shape: tuple[int, ...], labels_shape: tuple[int, ...], labels_dtype: np.dtype) -> bool:
    """Check the arrays' shapes (no data needed); True when images are (N,H,W,C)."""
    if len(shape) not in (3, 4):
        raise DatasetError(f"dataset {name}: images must have shape (N,H,W), (N,H,W,C) or (N,C,H,W); got {shape}")
    last = len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3)
    if len(shape) == 4 and not last and shape[1] not in (1, 3):
        raise DatasetError(f"dataset {name}: images need 1 or 3 channels; got shape {shape}")
    if len(labels_shape) != 1 or labels_shape[0] != shape[0]:
        raise DatasetError(f"dataset {name}: labels must have shape ({shape[0]},); got {labels_shape}")
    if not np.issubdtype(labels_dtype, np.integer):
        raise DatasetError(f"dataset {name}: labels must be non-negative integers; got dtype {labels_dtype}")
    return last


def _to_tensor(images: np.ndarray, labels: np.ndarray, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,H,W,C) or (N,C,H,W) or (N,H,W) images and (N,) labels -> float NCHW and int64."""
    if _channels_last(name, images.shape, labels.shape, labels.dtype):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim == 3:
        images = images[:, None]
    if len(labels) and labels.min() < 0:
        raise DatasetError(f"dataset {name}: labels must be non-negative integers; got {labels.min()}")
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


def check_split_settings(validation_fraction: float, train_subset: int | None) -> None:
    if not (math.isfinite(validation_fraction) and 0.0 < validation_fraction < 1.0):
        raise DatasetError(f"training.dataset.validationFraction: {validation_fraction} is not accepted; "
                           "give a fraction between 0 and 1")
    if train_subset is not None and train_subset < MIN_SPLIT_IMAGES:
        raise DatasetError(f"training.dataset.trainSubset: {train_subset} is not accepted; "
                           f"give at least {MIN_SPLIT_IMAGES} images")


def split_sizes(name: str, images: int, validation_fraction: float,
                train_subset: int | None = None) -> tuple[int, int]:
    """(training, validation) image counts of a split, or DatasetError when either is
    too small for a reward to mean anything."""
    check_split_settings(validation_fraction, train_subset)
    validation = int(round(images * validation_fraction))
    training = images - validation
    if train_subset is not None:
        training = min(training, train_subset)
    if images < 2 * MIN_SPLIT_IMAGES:
        raise DatasetError(f"dataset {name}: only {images} images; at least {2 * MIN_SPLIT_IMAGES} are needed "
                           f"({MIN_SPLIT_IMAGES} to train on, {MIN_SPLIT_IMAGES} to validate)")
    if validation < MIN_SPLIT_IMAGES:
        raise DatasetError(f"training.dataset.validationFraction: {validation_fraction} of the {images} images of "
                           f"dataset {name} leaves {validation} validation images; at least {MIN_SPLIT_IMAGES} are "
                           f"needed (give at least {MIN_SPLIT_IMAGES / images:.3g})")
    if training < MIN_SPLIT_IMAGES:
        raise DatasetError(f"training.dataset.validationFraction: {validation_fraction} of the {images} images of "
                           f"dataset {name} leaves {training} training images; at least {MIN_SPLIT_IMAGES} are "
                           f"needed (give at most {1 - MIN_SPLIT_IMAGES / images:.3g})")
    return training, validation


# What torchvision's CIFAR loaders read under root (their base_folder and train_list);
# the preflight looks for these files without importing torchvision or reading them.
CIFAR_TRAIN_FILES = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6))),
    "cifar100": ("cifar-100-python", ("train",)),
}
# Training images of the fixed datasets (the training part of CIFAR; digits has no test part).
# distorted-digits is not among them: its split is its own, not validationFraction's.
DATASET_IMAGES = {"digits": 1797, "cifar10": 50_000, "cifar100": 50_000}


def preflight_dataset(spec: "DatasetSpec", skeleton: str = "cifar") -> None:
    """Check, before a search starts, what would otherwise fail every trial: the file or
    directory is there and readable, the arrays have usable shapes, the split leaves
    enough images on both sides, and the images are large enough for the skeleton's
    reductions. Cheap: reads file names and array headers, no data.
    Raises DatasetError naming the field, the value and what is accepted."""
    check_split_settings(spec.validation_fraction, spec.train_subset)
    root = Path(spec.root).expanduser() if spec.root else None
    if spec.name == "imagefolder":
        from kubenas.training import imagefolder

        _check_resolution(spec.image_size or imagefolder.DEFAULT_RESOLUTION, skeleton, "training.dataset.resolution")
        imagefolder.preflight(spec)
        return
    if spec.name == "npz":
        images = _npz_images(root, skeleton)
    elif spec.name in CIFAR_TRAIN_FILES:
        _check_cifar_files(spec.name, root, spec.download)
        images = DATASET_IMAGES[spec.name]
    elif spec.name in DATASET_IMAGES:
        images = DATASET_IMAGES[spec.name]
    elif spec.name == DISTORTED_DIGITS:
        images = None  # a fixed split (kubenas/training/distorted_digits.py), generated in memory
    else:
        raise DatasetError(f"training.dataset.name: {spec.name!r} is not accepted; choose one of "
                           f"{sorted([*DATASETS, 'imagefolder', DISTORTED_DIGITS])}")
    if images is not None:
        split_sizes(spec.name, images, spec.validation_fraction, spec.train_subset)
    if spec.image_size is not None:
        _check_resolution(spec.image_size, skeleton, "training.skeleton")


def _check_resolution(size: int, skeleton: str, field_name: str) -> None:
    from kubenas.spec import SKELETON_REDUCTIONS

    if skeleton not in SKELETON_REDUCTIONS:
        raise DatasetError(f"training.skeleton: {skeleton!r} is not accepted; choose one of {sorted(SKELETON_REDUCTIONS)}")
    smallest = 2 ** SKELETON_REDUCTIONS[skeleton]
    if size < smallest:
        raise DatasetError(f"{field_name}: {size}-pixel images are too small for the {skeleton} skeleton, which "
                           f"halves them {SKELETON_REDUCTIONS[skeleton]} times; it needs at least {smallest} pixels")


def _check_cifar_files(name: str, root: Optional[Path], download: bool) -> None:
    if root is None:
        raise DatasetError(f"training.dataset.root: dataset {name} needs a root (a directory holding the "
                           "torchvision files, or where to download them)")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"training.dataset.root: {root} is a file; dataset {name} needs a directory")
    if download:
        return  # torchvision fetches what is missing
    folder, files = CIFAR_TRAIN_FILES[name]
    missing = [f for f in files if not (root / folder / f).is_file()]
    if missing:
        raise DatasetError(f"training.dataset.root: dataset {name} has no usable files under {root} (missing "
                           f"{folder}/{missing[0]}); put the torchvision files there, or set "
                           "training.dataset.download: true where the network reaches the dataset's host")


def _npz_images(path: Optional[Path], skeleton: str = "cifar") -> int:
    """The image count of an .npz, from its arrays' headers (the data stays on disk)."""
    if path is None:
        raise DatasetError("training.dataset.root: dataset npz needs the path of an .npz file with arrays x and y")
    if path.is_dir():
        raise DatasetError(f"training.dataset.root: {path} is a directory; dataset npz needs an .npz file")
    if not path.exists():
        raise DatasetError(f"training.dataset.root: {path} does not exist; dataset npz needs an .npz file")
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [k for k in ("x", "y") if f"{k}.npy" not in names]
            if missing:
                have = sorted(n.removesuffix(".npy") for n in names)
                raise DatasetError(f"dataset npz: {path} lacks arrays {missing}; it has {have}")
            for key in ("x", "y"):
                with archive.open(f"{key}.npy") as member:
                    version = np.lib.format.read_magic(member)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    headers[key] = read(member)
    except zipfile.BadZipFile:
        raise DatasetError(f"training.dataset.root: {path} is not an .npz archive (not a zip file)") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"dataset npz: {path} is not a readable .npz: {exc}") from None
    (x_shape, _, x_dtype), (y_shape, _, y_dtype) = headers["x"], headers["y"]
    for key, dtype in (("x", x_dtype), ("y", y_dtype)):
        if dtype.hasobject:
            raise DatasetError(f"dataset npz: {path} array {key} holds Python objects; it must be a readable .npz "
                               "without pickled objects (numeric arrays)")
    if x_dtype.kind not in "biuf":
        raise DatasetError(f"dataset npz: {path} array x has dtype {x_dtype}; images must be numbers")
    last = _channels_last("npz", x_shape, y_shape, y_dtype)
    height, width = (x_shape[1], x_shape[2]) if last or len(x_shape) == 3 else (x_shape[2], x_shape[3])
    _check_resolution(min(height, width), skeleton, "training.skeleton")
    return int(x_shape[0])


def load_dataset_spec(spec: "DatasetSpec", seed: int = 0, augmentation: Optional["AugmentationSpec"] = None) -> Splits:
    """The dataset a trial trains on, as training.dataset and training.augmentation describe it."""
    augment = Augment.of(augmentation)
    if spec.name == "imagefolder":
        from kubenas.training import imagefolder

        return imagefolder.load(spec, seed, augment)
    return load_dataset(spec.name, spec.root, spec.download, spec.validation_fraction, spec.train_subset, seed,
                        mean=spec.mean, std=spec.std, augment=augment)


def normalization(spec: "DatasetSpec", seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel that training with `seed` normalises the inputs with: the spec's, or
    measured on the training split. Inputs are in [0, 1] (npz: as stored, uint8 scaled to [0, 1]).
    A model that takes raw images applies (x - mean) / std first."""
    if spec.mean is not None and spec.std is not None and spec.name != "imagefolder":
        return tuple(spec.mean), tuple(spec.std)
    if spec.name == "imagefolder":
        from kubenas.training import imagefolder

        return imagefolder.normalization(spec, seed)
    data = load_dataset_spec(spec, seed)
    return data.mean, data.std


def load_test_split(spec: "DatasetSpec") -> "Any":
    """The held-out test split of an imagefolder dataset (root/test, or testFraction of a single
    tree) or of distorted-digits (its own): an object whose `dataset` yields un-normalised images
    (imagefolder: [0, 1] RGB) and labels, and `tensors()` all of them at once. DatasetError for a
    dataset without one."""
    if spec.name == DISTORTED_DIGITS:
        from kubenas.training import distorted_digits

        return distorted_digits.load_test()
    if spec.name != "imagefolder":
        raise DatasetError(f"training.dataset.name: {spec.name} has no held-out test split here; use imagefolder "
                           f"with a test/ directory or training.dataset.testFraction, or {DISTORTED_DIGITS}")
    from kubenas.training import imagefolder

    return imagefolder.load_test(spec)


def load_dataset(name: str, root: str | Path | None = None, download: bool = False,
                 validation_fraction: float = 0.2, train_subset: int | None = None, seed: int = 0,
                 mean: Optional[list[float]] = None, std: Optional[list[float]] = None,
                 augment: Optional[Augment] = None) -> Splits:
    """Load `name`, hold out a seeded validation split, normalise per channel with train statistics
    (or the given mean and std)."""
    if name == "imagefolder":
        from kubenas.spec import DatasetSpec
        from kubenas.training import imagefolder

        spec = DatasetSpec(name="imagefolder", root=str(root) if root else None,
                           validation_fraction=validation_fraction, train_subset=train_subset, mean=mean, std=std)
        return imagefolder.load(spec, seed, augment)
    if name == DISTORTED_DIGITS:  # its split is fixed: validation_fraction and seed take no part
        from kubenas.training import distorted_digits

        return distorted_digits.load(train_subset, mean, std, augment)
    if name not in DATASETS:
        raise DatasetError(f"training.dataset.name: {name!r} is not accepted; choose one of "
                           f"{sorted([*DATASETS, DISTORTED_DIGITS])}")
    check_split_settings(validation_fraction, train_subset)  # before any loading
    images, labels, mirror_ok = DATASETS[name](Path(root) if root else None, download)
    x, y = _to_tensor(np.asarray(images), np.asarray(labels), name)
    n_train, n_val = split_sizes(name, len(x), validation_fraction, train_subset)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val], order[n_val:][:n_train]
    train_x, val_x = x[train_idx], x[val_idx]
    if mean is not None and std is not None:
        if len(mean) not in (1, train_x.shape[1]):
            raise DatasetError(f"training.dataset.mean: {mean} is not accepted; dataset {name} has "
                               f"{train_x.shape[1]} channel(s): give 1 or {train_x.shape[1]} values")
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).expand(1, train_x.shape[1], 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).expand(1, train_x.shape[1], 1, 1)
    else:
        m = train_x.mean(dim=(0, 2, 3), keepdim=True)
        s = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return Splits(
        name=name,
        train_x=(train_x - m) / s,
        train_y=y[train_idx],
        val_x=(val_x - m) / s,
        val_y=y[val_idx],
        num_classes=int(y.max()) + 1,
        mirror_ok=mirror_ok,
        mean=tuple(m.flatten().tolist()),
        std=tuple(s.flatten().tolist()),
        augment=augment,
    )
