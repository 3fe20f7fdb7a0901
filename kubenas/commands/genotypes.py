"""`kubenas sample` and `kubenas describe`."""

from __future__ import annotations

import argparse
import json
import random

from kubenas.commands.common import fail, parse_shape, read_genotype
from kubenas.errors import KubenasError
from kubenas.spaces import MAX_BLOCKS, SPACES, Genotype, build_space, space_of


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    if command == "sample":
        parser.add_argument("space", choices=sorted(SPACES))
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--blocks", type=int, default=None,
                            help=f"B for nasnet, nodes for darts (1..{MAX_BLOCKS})")
    else:
        parser.add_argument("genotype", help="genotype JSON file, or - for stdin")
        parser.add_argument("--channels", "-F", type=int, default=16, help="initial filters F")
        parser.add_argument("--cells", "-N", type=int, default=2, help="normal cells per stage N")
        parser.add_argument("--classes", type=int, default=10)
        parser.add_argument("--input", default="3x32x32", help="input shape CxHxW")


def sample(args: argparse.Namespace) -> Genotype:
    spec: dict = {"type": args.space}
    if args.blocks is not None:
        if args.space == "nasbench201":
            raise KubenasError("--blocks: does not apply to nasbench201 (its cell is fixed)")
        if not 1 <= args.blocks <= MAX_BLOCKS:
            raise KubenasError(f"--blocks: {args.blocks} is not accepted; give 1..{MAX_BLOCKS}")
        spec["blocks"] = args.blocks
    return build_space(spec).sample(random.Random(args.seed))


def run(command: str, args: argparse.Namespace) -> int:
    try:
        if command == "sample":
            print(json.dumps(sample(args), indent=2))
            return 0
        genotype = read_genotype(args.genotype)
        from kubenas import export
        from kubenas.nn import count_parameters, multiply_adds

        size = export.plan_size(genotype, args.cells, args.channels, None, 0.0, parse_shape(args.input))
        model, _ = export.build(genotype, size, num_classes=args.classes)
        shape = size.input_shape
        try:
            madds = multiply_adds(model, shape)
        except RuntimeError as exc:
            raise KubenasError(f"--input: the network cannot run on {args.input}: {str(exc).splitlines()[0]}") from None
    except KubenasError as exc:
        return fail(str(exc))
    space = space_of(genotype)
    print(json.dumps({
        "space": genotype["space"],
        "hash": space.hash(genotype),
        "canonical": space.canonical(genotype),
        "parameters": count_parameters(model),
        "multiply_adds": madds,
        "model": f"N={args.cells} F={args.channels} input={args.input}",
    }, indent=2))
    return 0
