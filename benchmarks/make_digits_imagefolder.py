"""Write scikit-learn's digits as an ImageFolder tree of 32x32 PNGs.

    ./dev python benchmarks/make_digits_imagefolder.py DIR [--layout split|single] [--corrupt] [--empty-class]

split (default): DIR/train, DIR/validation and DIR/test, each with one directory per
digit (0 to 9); single: the class directories directly under DIR (a search splits them
by training.dataset.validationFraction and testFraction). The 8x8 digits (values 0-16)
are upscaled to 32x32 grayscale PNGs with PIL; training.dataset.name: imagefolder reads
them as RGB. --corrupt adds files a loader must skip (a truncated PNG, a text file named
.png, a file that is not an image by its name); --empty-class adds a class directory
with nothing in it (which a search refuses, naming training.dataset.root).
Offline: the digits come with scikit-learn.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

# The shares of the split layout (train gets the rest).
VALIDATION_SHARE = 0.2
TEST_SHARE = 0.2


@dataclass
class Written:
    images: dict[str, int]  # per part (train, validation, test; or all)
    corrupt: list[Path] = field(default_factory=list)  # the files a loader must skip
    empty_class: Optional[Path] = None


def write_digits_imagefolder(root: Path, size: int = 32, layout: str = "split", limit: Optional[int] = None,
                             corrupt: bool = False, empty_class: bool = False, seed: int = 0) -> Written:
    """Write the tree under `root` (created); `limit` keeps only the first that many digits
    of a seeded shuffle (small trees for tests)."""
    from sklearn.datasets import load_digits

    if layout not in ("split", "single"):
        raise ValueError(f"layout: {layout!r} is not accepted; use split or single")
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))[:limit]
    pixels = (digits.images[order] * (255.0 / 16.0)).round().astype(np.uint8)
    labels = digits.target[order]
    n = len(labels)
    if layout == "single":
        parts = {"": np.arange(n)}
    else:
        n_val, n_test = int(round(n * VALIDATION_SHARE)), int(round(n * TEST_SHARE))
        parts = {"validation": np.arange(0, n_val), "test": np.arange(n_val, n_val + n_test),
                 "train": np.arange(n_val + n_test, n)}
    written = Written(images={})
    for part, indices in parts.items():
        base = root / part if part else root
        for digit in range(10):
            (base / str(digit)).mkdir(parents=True, exist_ok=True)
        for i in indices:
            image = Image.fromarray(pixels[i], mode="L").resize((size, size), Image.Resampling.BILINEAR)
            image.save(base / str(labels[i]) / f"{order[i]:04d}.png")
        written.images[part or "all"] = len(indices)
    if corrupt:
        written.corrupt = _add_corrupt_files(root / "train" if layout == "split" else root)
    if empty_class:
        written.empty_class = root / "train" / "empty" if layout == "split" else root / "empty"
        written.empty_class.mkdir(parents=True, exist_ok=True)
        if layout == "split":
            for part in ("validation", "test"):
                (root / part / "empty").mkdir(parents=True, exist_ok=True)
    return written


def _add_corrupt_files(base: Path) -> list[Path]:
    """A PNG cut off half-way, text named .png, and a non-image file among the images."""
    source = next((base / "0").glob("*.png"))
    truncated = base / "0" / "truncated.png"
    data = source.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = base / "1" / "not-really.png"
    text.write_text("this is text, not a PNG\n")
    notes = base / "2" / "notes.txt"
    notes.write_text("labelled by hand, 2026\n")
    return [truncated, text, notes]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--layout", choices=("split", "single"), default="split")
    parser.add_argument("--size", type=int, default=32, help="height and width of the PNGs (default 32)")
    parser.add_argument("--limit", type=int, default=None, help="write only this many digits (default: all 1797)")
    parser.add_argument("--corrupt", action="store_true", help="add unreadable files a loader must skip")
    parser.add_argument("--empty-class", action="store_true", help="add an empty class directory")
    args = parser.parse_args(argv)
    if args.size < 1 or (args.limit is not None and args.limit < 10):
        parser.error("--size must be at least 1 and --limit at least 10")
    written = write_digits_imagefolder(args.directory, args.size, args.layout, args.limit, args.corrupt,
                                       args.empty_class)
    counts = ", ".join(f"{part} {n}" for part, n in written.images.items())
    print(f"wrote {sum(written.images.values())} digits as {args.size}x{args.size} PNGs under {args.directory} "
          f"({counts}); corrupt files: {len(written.corrupt)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
