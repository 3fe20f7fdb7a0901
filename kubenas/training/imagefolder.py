"""Users' own images: torchvision's ImageFolder layout on a (read-only) volume.

Layout: `root/train/<class>/*`, `root/validation/<class>/*` (or `val/`) and optionally
`root/test/<class>/*`; or the class directories directly under root, split by
`validationFraction` and `testFraction`. Every image is converted to RGB, resized
(shorter side) and centre-cropped to `resolution` pixels square, scaled to [0, 1] and
normalised per channel with the training split's mean and standard deviation.

Bad data is a counted, logged skip, never a PIL traceback: files without an image
extension, and files PIL cannot read (truncated, text named .png). Each file is
checked once when the dataset loads; the warning names the first few and the count.
What no training can use is a DatasetError naming the field: a missing directory,
a class with no images, train and validation class lists that differ.

Small datasets are decoded once and kept in memory as tensors (the path every other
dataset takes: no decoding per epoch, data on the GPU where it fits); above
`cacheLimitMiB` the images are read from disk each epoch through a DataLoader
(`loaderWorkers` processes), so a dataset larger than memory is never loaded whole.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from kubenas.errors import DatasetError
from kubenas.training.datasets import MIN_SPLIT_IMAGES, Augment, Splits, split_sizes

if TYPE_CHECKING:
    from kubenas.spec import DatasetSpec

log = logging.getLogger("kubenas.datasets")

DEFAULT_RESOLUTION = 32
NAMED_SKIPS = 10  # the warning names this many skipped files, then counts the rest
# Streamed datasets: mean and std are measured on this many training images (a seeded sample).
STATISTICS_IMAGES = 2000
# The test split of a single tree is drawn with this seed, whatever the trial's seed:
# a test image must never become a training image in another trial.
TEST_SPLIT_SEED = 20180101

Sample = tuple[str, int]  # (path, class index), as torchvision's make_dataset gives them


@dataclass
class Tree:
    """What listing the directories found (no image opened)."""

    root: Path
    classes: list[str]
    parts: dict[str, list[Sample]]  # "train", "validation", "test" (present ones) or "all"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def _part_dirs(root: Optional[Path]) -> dict[str, Path]:
    if root is None:
        raise DatasetError("training.dataset.root: dataset imagefolder needs the directory of your images "
                           "(one subdirectory per class, or train/ and validation/ holding those)")
    if not root.exists():
        raise DatasetError(f"training.dataset.root: {root} does not exist (in a cluster: is the volume mounted "
                           "there, see trainer.volumeMounts?)")
    if not root.is_dir():
        raise DatasetError(f"training.dataset.root: {root} is a file; dataset imagefolder needs a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"training.dataset.root: {root} is not readable by this process")
    if not (root / "train").is_dir():
        return {"all": root}
    validation = next((root / n for n in ("validation", "val") if (root / n).is_dir()), None)
    if validation is None:
        raise DatasetError(f"training.dataset.root: {root}/train exists but {root}/validation (or val) does not; "
                           "give both, or put the class directories directly under the root to split one tree "
                           "by validationFraction")
    dirs = {"train": root / "train", "validation": validation}
    if (root / "test").is_dir():
        dirs["test"] = root / "test"
    return dirs


def _class_names(directory: Path) -> list[str]:
    try:
        names = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DatasetError(f"training.dataset.root: cannot list {directory}: {exc}") from None
    if not names:
        raise DatasetError(f"training.dataset.root: {directory} has no class subdirectories; imagefolder wants "
                           "one directory per class holding its images")
    return names


def scan(root: Optional[Path]) -> Tree:
    """List the tree and check what no training could use (DatasetError naming the field)."""
    dirs = _part_dirs(root)
    assert root is not None
    skipped: list[tuple[str, str]] = []

    def is_image(path: str) -> bool:
        name = os.path.basename(path)
        if name.startswith("."):
            return False  # .DS_Store and friends: not data, not worth a warning
        if name.lower().endswith(IMG_EXTENSIONS):
            return True
        skipped.append((path, "not an image file name (" + ", ".join(IMG_EXTENSIONS) + ")"))
        return False

    first = next(iter(dirs))
    classes = _class_names(dirs[first])
    parts: dict[str, list[Sample]] = {}
    for part, directory in dirs.items():
        names = _class_names(directory) if part != first else classes
        if names != classes:
            missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
            raise DatasetError(f"training.dataset.root: the classes of {directory} differ from those of "
                               f"{dirs[first]} (missing: {missing or 'none'}; not in {first}: {extra or 'none'}); "
                               "every split needs the same class directories")
        samples = make_dataset(directory, {c: i for i, c in enumerate(classes)}, is_valid_file=is_image,
                               allow_empty=True)
        _check_no_empty_class(directory, classes, samples, "has no image files")
        parts[part] = samples
    return Tree(root, classes, parts, skipped)


def _check_no_empty_class(directory: Path, classes: list[str], samples: list[Sample], why: str) -> None:
    counts = [0] * len(classes)
    for _, label in samples:
        counts[label] += 1
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DatasetError(f"training.dataset.root: class director{'ies' if len(empty) > 1 else 'y'} "
                           f"{', '.join(str(directory / c) for c in empty[:5])} {why}; add images or remove "
                           "the directory")


def _permuted(samples: list[Sample], seed: int) -> list[Sample]:
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [samples[i] for i in order]


def split(tree: Tree, spec: "DatasetSpec", seed: int) -> dict[str, list[Sample]]:
    """train, validation and test samples. A single tree: the test share is drawn with a fixed
    seed first (the same images in every trial), then validation with the trial's seed."""
    if "all" not in tree.parts:
        parts = dict(tree.parts)
        for part in ("train", "validation"):
            if len(parts[part]) < MIN_SPLIT_IMAGES:
                raise DatasetError(f"training.dataset.root: {tree.root}/{part} holds {len(parts[part])} images; "
                                   f"at least {MIN_SPLIT_IMAGES} are needed")
        if spec.train_subset is not None:
            parts["train"] = _permuted(parts["train"], seed)[:spec.train_subset]
        return parts
    everything = sorted(tree.parts["all"])
    n_test = int(round(len(everything) * spec.test_fraction))
    shuffled = _permuted(everything, TEST_SPLIT_SEED)
    test, rest = shuffled[:n_test], shuffled[n_test:]
    if spec.test_fraction and len(test) < MIN_SPLIT_IMAGES:
        raise DatasetError(f"training.dataset.testFraction: {spec.test_fraction} of the {len(everything)} images "
                           f"leaves {len(test)} test images; at least {MIN_SPLIT_IMAGES} are needed")
    if len(rest) < 2 * MIN_SPLIT_IMAGES:
        raise DatasetError(f"training.dataset.root: {tree.root} holds {len(everything)} images"
                           f"{f' ({len(test)} of them for testing)' if test else ''}; at least "
                           f"{2 * MIN_SPLIT_IMAGES} are needed to train on and validate")
    fraction = spec.validation_fraction / (1.0 - spec.test_fraction)  # of what the test split leaves
    n_train, n_val = split_sizes("imagefolder", len(rest), fraction, spec.train_subset)
    rest = _permuted(sorted(rest), seed)
    return {"train": rest[n_val:][:n_train], "validation": rest[:n_val], "test": test}


def _resize(resolution: int) -> list[Any]:
    return [transforms.Resize(resolution), transforms.CenterCrop(resolution)]


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")  # convert() reads the whole file: a truncated one raises here


def _decode(samples: list[Sample], resolution: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Decode every image once: uint8 (N, 3, R, R), labels, and the files that could not be read."""
    to_tensor = transforms.Compose([*_resize(resolution), transforms.PILToTensor()])
    images, labels, bad = [], [], []
    for path, label in samples:
        try:
            images.append(to_tensor(_open_rgb(path)))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a counted skip, never a crash
            bad.append((path, _why(exc)))
            continue
        labels.append(label)
    x = torch.stack(images) if images else torch.zeros(0, 3, resolution, resolution, dtype=torch.uint8)
    return x, torch.tensor(labels, dtype=torch.int64), bad


def _verify(samples: list[Sample]) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Decode each file once and keep none of it (datasets read from disk). Image.verify() is not
    enough: it passes a JPEG cut inside its image data, which then fails in the middle of training."""
    good, bad = [], []
    for path, label in samples:
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as exc:  # noqa: BLE001 - as in _decode
            bad.append((path, _why(exc)))
            continue
        good.append((path, label))
    return good, bad


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def report_skips(root: Path, skipped: list[tuple[str, str]], total: int) -> None:
    """One warning naming the first NAMED_SKIPS skipped files and counting them all."""
    if not skipped:
        return
    named = "; ".join(f"{path} ({why})" for path, why in skipped[:NAMED_SKIPS])
    more = f"; and {len(skipped) - NAMED_SKIPS} more" if len(skipped) > NAMED_SKIPS else ""
    log.warning("training.dataset.root: skipped %d of %d files under %s that are not readable images: %s%s",
                len(skipped), total, root, named, more)


class ImageFiles(Dataset):
    """Images read from disk at each access (torchvision transforms on PIL images)."""

    def __init__(self, samples: list[Sample], transform: Any):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            image = _open_rgb(path)
        except Exception as exc:  # noqa: BLE001 - changed on disk after the check at load
            raise DatasetError(f"training.dataset.root: {path} became unreadable during training "
                               f"({_why(exc)})") from None
        return self.transform(image), label


def _cutout(augment: Augment, resolution: int) -> list[Any]:
    """Cutout as torchvision's RandomErasing: always one square of side `cutout`, set to 0 (the mean,
    after normalisation)."""
    if not augment.cutout:
        return []
    share = min(1.0, (augment.cutout / resolution) ** 2)
    return [transforms.RandomErasing(p=1.0, scale=(share, share), ratio=(1.0, 1.0), value=0.0)]


def file_transforms(resolution: int, mean: tuple[float, ...], std: tuple[float, ...],
                    augment: Optional[Augment]) -> Any:
    """Decode-time transforms of one image: resize and crop, augmentation (training only), normalisation."""
    steps = _resize(resolution)
    if augment is not None and augment.padding:
        steps.append(transforms.RandomCrop(resolution, padding=augment.padding))
    if augment is not None and augment.flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if augment is not None:
        steps += _cutout(augment, resolution)
    return transforms.Compose(steps)


def _given_statistics(spec: "DatasetSpec") -> Optional[tuple[tuple[float, ...], tuple[float, ...]]]:
    if spec.mean is None or spec.std is None:
        return None
    if len(spec.mean) not in (1, 3):
        raise DatasetError(f"training.dataset.mean: {spec.mean} is not accepted for imagefolder; give 1 or 3 "
                           "values (RGB)")
    mean, std = list(spec.mean), list(spec.std)
    return tuple(mean * 3 if len(mean) == 1 else mean), tuple(std * 3 if len(std) == 1 else std)


def _statistics(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, as the [0, 1] values the networks see."""
    values = x.float().div_(255.0)
    mean = values.mean(dim=(0, 2, 3))
    std = values.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def _measured_from_files(samples: list[Sample], resolution: int, seed: int):
    sample = _permuted(samples, seed)[:STATISTICS_IMAGES]
    x, _, _ = _decode(sample, resolution)
    if len(x) == 0:
        raise DatasetError("training.dataset.root: none of the sampled training images could be read")
    return _statistics(x)


def load(spec: "DatasetSpec", seed: int = 0, augment: Optional[Augment] = None) -> Splits:
    """The train and validation splits of an imagefolder dataset (its test split: load_test)."""
    root = Path(spec.root).expanduser() if spec.root else None
    tree = scan(root)
    parts = split(tree, spec, seed)
    resolution = spec.resolution or DEFAULT_RESOLUTION
    augment = augment or Augment()
    n = len(parts["train"]) + len(parts["validation"])
    in_memory = n * 3 * resolution * resolution * 4 <= spec.cache_limit_mib * 2 ** 20
    skipped = list(tree.skipped)
    given = _given_statistics(spec)
    if in_memory:
        train_x, train_y, bad_train = _decode(parts["train"], resolution)
        val_x, val_y, bad_val = _decode(parts["validation"], resolution)
        skipped += bad_train + bad_val
        report_skips(tree.root, skipped, n + len(tree.skipped))
        _check_enough(tree, "train", len(train_x), train_y, len(parts["train"]))
        _check_enough(tree, "validation", len(val_x), val_y, len(parts["validation"]))
        mean, std = given or _statistics(train_x)
        m = torch.tensor(mean).view(1, 3, 1, 1)
        s = torch.tensor(std).view(1, 3, 1, 1)
        return Splits(name="imagefolder", train_x=(train_x.float() / 255.0 - m) / s, train_y=train_y,
                      val_x=(val_x.float() / 255.0 - m) / s, val_y=val_y, num_classes=len(tree.classes),
                      mirror_ok=False, mean=mean, std=std, augment=augment, classes=list(tree.classes),
                      skipped=skipped)
    train, bad_train = _verify(parts["train"])
    val, bad_val = _verify(parts["validation"])
    skipped += bad_train + bad_val
    report_skips(tree.root, skipped, n + len(tree.skipped))
    _check_enough(tree, "train", len(train), torch.tensor([s[1] for s in train]), len(parts["train"]))
    _check_enough(tree, "validation", len(val), torch.tensor([s[1] for s in val]), len(parts["validation"]))
    mean, std = given or _measured_from_files(train, resolution, seed)
    return Splits(name="imagefolder", train_x=None, train_y=None, val_x=None, val_y=None,
                  num_classes=len(tree.classes), mirror_ok=False, mean=mean, std=std, augment=augment,
                  classes=list(tree.classes), skipped=skipped,
                  train_set=ImageFiles(train, file_transforms(resolution, mean, std, augment)),
                  val_set=ImageFiles(val, file_transforms(resolution, mean, std, None)),
                  loader_workers=spec.loader_workers, image_shape=(3, resolution, resolution))


def _check_enough(tree: Tree, part: str, readable: int, labels: torch.Tensor, listed: int) -> None:
    if readable < MIN_SPLIT_IMAGES:
        raise DatasetError(f"training.dataset.root: only {readable} of the {listed} {part} images under "
                           f"{tree.root} could be read; at least {MIN_SPLIT_IMAGES} are needed")
    present = set(labels.tolist())
    unreadable = [c for i, c in enumerate(tree.classes) if i not in present]
    if unreadable and part == "train":
        raise DatasetError(f"training.dataset.root: class{'es' if len(unreadable) > 1 else ''} "
                           f"{', '.join(unreadable[:5])} under {tree.root} ha{'ve' if len(unreadable) > 1 else 's'} "
                           "no readable training image; add images or remove the directory")


def normalization(spec: "DatasetSpec", seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel of [0, 1] inputs, as training normalises them: the spec's, or
    measured on the training split of `seed` (the whole split in memory; else a sample)."""
    given = _given_statistics(spec)
    if given is not None:
        return given
    tree = scan(Path(spec.root).expanduser() if spec.root else None)
    train = split(tree, spec, seed)["train"]
    resolution = spec.resolution or DEFAULT_RESOLUTION
    if len(train) * 3 * resolution * resolution * 4 <= spec.cache_limit_mib * 2 ** 20:
        x, _, _ = _decode(train, resolution)
        return _statistics(x)
    return _measured_from_files(_verify(train)[0], resolution, seed)


@dataclass
class TestSplit:
    """The held-out images, un-normalised float RGB in [0, 1] (what an exported model takes)."""

    dataset: Dataset  # (image (3, R, R), label) pairs, read from disk
    classes: list[str]
    skipped: list[tuple[str, str]]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All of it in memory: (N, 3, R, R) float in [0, 1] and (N,) labels."""
        pairs = [self.dataset[i] for i in range(len(self.dataset))]  # type: ignore[arg-type]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.int64)


def load_test(spec: "DatasetSpec") -> TestSplit:
    """The test split: root/test, or the testFraction share of a single tree (never trained on)."""
    tree = scan(Path(spec.root).expanduser() if spec.root else None)
    test = split(tree, spec, 0).get("test") or []
    if not test:
        raise DatasetError(f"training.dataset.root: {tree.root} has no test split; add test/ beside train/ and "
                           "validation/, or set training.dataset.testFraction for a single tree")
    good, bad = _verify(test)
    report_skips(tree.root, bad, len(test))
    if not good:
        raise DatasetError(f"training.dataset.root: none of the {len(test)} test images could be read")
    resolution = spec.resolution or DEFAULT_RESOLUTION
    return TestSplit(ImageFiles(good, transforms.Compose([*_resize(resolution), transforms.ToTensor()])),
                     list(tree.classes), bad)


def preflight(spec: "DatasetSpec") -> int:
    """Before a search: the layout, the classes and the split sizes, from file names only.
    Returns the number of files that look like images (no image is opened)."""
    tree = scan(Path(spec.root).expanduser() if spec.root else None)
    parts = split(tree, spec, 0)
    if tree.skipped:
        report_skips(tree.root, tree.skipped, sum(len(p) for p in tree.parts.values()) + len(tree.skipped))
    return sum(len(p) for p in parts.values())
