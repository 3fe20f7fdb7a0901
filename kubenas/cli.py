"""The `kubenas` command line. Each subcommand lives in its own module and is
imported only when used, so `kubenas crd` never loads torch."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with `add_arguments(parser)` and `run(args) -> int`, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("kubenas.commands.genotypes", "print a random genotype of a search space as JSON"),
    "describe": ("kubenas.commands.genotypes", "validate a genotype; print its hash, parameters and multiply-adds"),
    "train": ("kubenas.commands.train", "train a genotype briefly (the proxy task) and print its validation accuracy"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubenas", description="Kubernetes-native neural architecture search")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    command_parser = argparse.ArgumentParser(prog=f"kubenas {args.command}", description=COMMANDS[args.command][1])
    module.add_arguments(args.command, command_parser)
    command_args = command_parser.parse_args(rest)
    return module.run(args.command, command_args)


if __name__ == "__main__":
    sys.exit(main())
