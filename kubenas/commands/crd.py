"""`kubenas crd`: print the ArchitectureSearch CRD generated from the spec models.

    kubenas crd | kubectl apply -f -
    kubenas crd --output crds/architecturesearches.kubenas.io.yaml
    kubenas crd --check crds/architecturesearches.kubenas.io.yaml   # exit 1 when it drifted
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", metavar="FILE", help="write the YAML to FILE instead of stdout")
    parser.add_argument("--check", metavar="FILE", help="exit 1 when FILE differs from the generated CRD")


def run(command: str, args: argparse.Namespace) -> int:
    from kubenas.crd import crd_yaml

    from kubenas.commands.common import fail

    text = crd_yaml()
    try:
        if args.check:
            path = Path(args.check)
            current = path.read_text() if path.exists() else ""
            if current != text:
                print(f"{path} is out of date; regenerate it with: kubenas crd --output {path}", file=sys.stderr)
                return 1
            return 0
        if args.output:
            Path(args.output).write_text(text)
            return 0
    except (OSError, UnicodeDecodeError) as exc:
        return fail(f"{args.check or args.output}: {getattr(exc, 'strerror', None) or exc}")
    sys.stdout.write(text)
    return 0
