"""The `kubenas` command line. Each subcommand lives in its own module and is
imported only when used, so `kubenas crd` never loads torch."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with `add_arguments(parser)` and `run(args) -> int`, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("kubenas.commands.bench", "benchmark search strategies on a tabular benchmark (NAS-Bench-201)"),
    "crd": ("kubenas.commands.crd", "print the ArchitectureSearch CRD generated from the spec models"),
    "sample": ("kubenas.commands.genotypes", "print a random genotype of a search space as JSON"),
    "describe": ("kubenas.commands.genotypes", "validate a genotype; print its hash, parameters and multiply-adds"),
    "train": ("kubenas.commands.train", "train a genotype briefly (the proxy task) and print its validation accuracy"),
    "export": ("kubenas.commands.export", "write the best model as TorchScript/ONNX for full training"),
    "latency-table": ("kubenas.commands.latency", "time a search space's operations on this device (a latency lookup table, JSON)"),
    "run": ("kubenas.commands.run", "run an ArchitectureSearch manifest on this machine (embedded Redis, controller, trainers)"),
    "scale": ("kubenas.commands.live", "change the trainers of a running `kubenas run` (its output directory)"),
    "suspend": ("kubenas.commands.live", "suspend a running `kubenas run`: nothing new starts, running trials finish, then the trainers stop"),
    "resume": ("kubenas.commands.live", "resume a suspended `kubenas run`"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Only the chosen command's module is imported (and so only it may load torch).
    if not argv or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:<14} {help_text}" for name, (_, help_text) in COMMANDS.items())
        print(f"usage: kubenas COMMAND [ARGS]\n\nKubernetes-native neural architecture search.\n\ncommands:\n{listing}\n\n"
              "kubenas COMMAND --help shows a command's options.", file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"kubenas: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"kubenas {name}", description=help_text)
    module.add_arguments(name, parser)
    return module.run(name, parser.parse_args(rest))


if __name__ == "__main__":
    sys.exit(main())
