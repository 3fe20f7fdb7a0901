"""`kubenas train`: the proxy task for one genotype, from the command line."""

from __future__ import annotations

import argparse
import json

from kubenas.commands.common import fail, read_genotype
from kubenas.errors import KubenasError


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("genotype", help="genotype JSON file, or - for stdin")
    parser.add_argument("--dataset", default="digits", help="digits or distorted-digits (offline), cifar10, cifar100 or npz")
    parser.add_argument("--root", default=None, help="dataset directory (cifar) or .npz file")
    parser.add_argument("--download", action="store_true", help="download the dataset if missing")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=3e-4)
    parser.add_argument("--channels", "-F", type=int, default=16)
    parser.add_argument("--cells", "-N", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=None, help="use only this many training images")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)


# Flags checked against the bounds of the spec's training field of the same meaning.
FLAG_FIELDS = {"--epochs": "epochs", "--batch-size": "batch_size", "--lr": "learning_rate",
               "--weight-decay": "weight_decay", "--channels": "channels", "--cells": "cells_per_stage"}


def check_flags(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from kubenas.spec import DatasetSpec, TrainingSpec
    from kubenas.training.datasets import DISTORTED_DIGITS

    for flag, field in FLAG_FIELDS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        try:
            TrainingSpec.model_validate({field: value})
        except ValidationError as exc:
            raise KubenasError(f"{flag}: {value} is not accepted; {exc.errors()[0]['msg'].lower()}") from None
    # A fixed split (distorted-digits) refuses another validation fraction: the spec's rule, in the flag's name.
    if args.dataset == DISTORTED_DIGITS:
        try:
            DatasetSpec.model_validate({"name": args.dataset, "validation_fraction": args.validation_fraction})
        except ValidationError as exc:
            message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise KubenasError(message.replace("training.dataset.validationFraction", "--validation-fraction")) from None


def run(command: str, args: argparse.Namespace) -> int:
    from kubenas.training import TrainConfig, load_dataset, train_proxy

    try:
        check_flags(args)
        genotype = read_genotype(args.genotype)
        TrainConfig().with_hparams(genotype.get("hparams", {}))  # refuse bad values before loading data
        data = load_dataset(args.dataset, args.root, args.download, args.validation_fraction, args.train_subset, args.seed)
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                          weight_decay=args.weight_decay, channels=args.channels, cells_per_stage=args.cells,
                          device=args.device, seed=args.seed)

        def show(report) -> bool:
            print(f"epoch {report.epoch}: loss {report.train_loss:.3f} train {report.train_acc:.3f} "
                  f"val {report.val_acc:.3f} ({report.images_per_second:.0f} images/s)", flush=True)
            return True

        outcome = train_proxy(genotype, data, cfg, on_epoch=show)
    except (KubenasError, OSError, RuntimeError) as exc:
        return fail(str(exc))
    summary = outcome.to_dict()
    summary.pop("curve")
    print(json.dumps(summary, indent=2))
    return 0 if outcome.status != "diverged" else 1
