"""`kubenas sample` and `kubenas describe`."""

from __future__ import annotations

import argparse
import json
import random

from kubenas.commands.common import fail, parse_shape, read_genotype
from kubenas.errors import KubenasError
from kubenas.spaces import SPACES, build_space, space_of


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    if command == "sample":
        parser.add_argument("space", choices=sorted(SPACES))
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--blocks", type=int, default=None, help="B for nasnet, nodes for darts")
    else:
        parser.add_argument("genotype", help="genotype JSON file, or - for stdin")
        parser.add_argument("--channels", "-F", type=int, default=16, help="initial filters F")
        parser.add_argument("--cells", "-N", type=int, default=2, help="normal cells per stage N")
        parser.add_argument("--classes", type=int, default=10)
        parser.add_argument("--input", default="3x32x32", help="input shape CxHxW")


def run(command: str, args: argparse.Namespace) -> int:
    try:
        if command == "sample":
            spec = {"type": args.space, **({"blocks": args.blocks} if args.blocks else {})}
            genotype = build_space(spec).sample(random.Random(args.seed))
            print(json.dumps(genotype, indent=2))
            return 0
        genotype = read_genotype(args.genotype)
        shape = parse_shape(args.input)
    except (KubenasError, OSError) as exc:
        return fail(str(exc))
    from kubenas.nn import ModelConfig, build_model, count_parameters, multiply_adds

    cfg = ModelConfig(channels=args.channels, cells_per_stage=args.cells, num_classes=args.classes, in_channels=shape[0])
    model = build_model(genotype, cfg)
    space = space_of(genotype)
    print(json.dumps({
        "space": genotype["space"],
        "hash": space.hash(genotype),
        "canonical": space.canonical(genotype),
        "parameters": count_parameters(model),
        "multiply_adds": multiply_adds(model, shape),
        "model": f"N={args.cells} F={args.channels} input={args.input}",
    }, indent=2))
    return 0
