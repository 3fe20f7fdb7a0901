"""`kubenas export`: write the best model as TorchScript/ONNX, with model.json, for full training."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kubenas.commands.common import fail, parse_shape, read_genotype
from kubenas.errors import KubenasError

SIZE_HELP = """\
size: N normal cells per stage and F first-stage filters. NASNet's "N @ P" names
the penultimate layer's filters: P = 4 * F * k, k = hidden states the normal cell
concatenates (a concat block counts twice; darts 4; nasbench201 1). --penultimate P
picks F from P. (NASNet-A concatenates its k-2 input and its five blocks, k = 6, so
its 6 @ 768 is -N 6 -F 32.) Defaults: nasnet 6 @ F=32,
darts 6 @ F=36, nasbench201 5 @ F=16. --phi then scales depth by 1.2**phi (rounded
up) and width by 1.1**phi (to a multiple of 4), and suggests a resolution 1.15**phi
larger in model.json (EfficientNet's compound scaling).

The files are inference graphs (eval mode); to train, rebuild the network from
model.json's genotype and model_config with kubenas.nn.build_model."""


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = SIZE_HELP
    parser.add_argument("source", help="a genotype JSON file ('-' for stdin), a results directory holding "
                                       "best_genotype.json, or a search name (RESULTS/NAME/best_genotype.json)")
    parser.add_argument("--format", default="torchscript", choices=["torchscript", "onnx", "both"])
    parser.add_argument("--output", "-o", default=None,
                        help="directory to write into (default: SOURCE_DIR/export for a results directory, "
                             "./NAME-export for a genotype file)")
    parser.add_argument("--cells", "-N", type=int, default=None, help="normal cells per stage N")
    width = parser.add_mutually_exclusive_group()
    width.add_argument("--channels", "-F", type=int, default=None, help="first-stage filters F")
    width.add_argument("--penultimate", type=int, default=None,
                       help="filters of the penultimate layer instead of F (F = P / (4k), rounded)")
    parser.add_argument("--phi", type=float, default=0.0, help="compound scaling coefficient (default 0: none)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--input", default="3x32x32", help="input shape CxHxW the graphs are exported at")
    parser.add_argument("--auxiliary", action="store_true",
                        help="give the model an auxiliary head (recorded in model_config; unused at inference)")
    parser.add_argument("--drop-path", type=float, default=0.0,
                        help="drop-path probability recorded in model_config for the training run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    parser.add_argument("--results", default="results", help="where search names are looked up (default: results)")


def default_output(source: str, genotype_path: Path | str) -> Path:
    if genotype_path == "-":
        return Path("export")
    genotype_path = Path(genotype_path)
    if Path(source).is_file():
        return Path(f"{genotype_path.stem}-export")
    return genotype_path.parent / "export"


def run(command: str, args: argparse.Namespace) -> int:
    try:
        from kubenas import export

        genotype_path = export.resolve_source(args.source, args.results)
        genotype = read_genotype(str(genotype_path))
        size = export.plan_size(genotype, args.cells, args.channels, args.penultimate, args.phi,
                                parse_shape(args.input))
        output = Path(args.output) if args.output else default_output(args.source, genotype_path)
        meta = export.export(genotype, output, args.format, size, num_classes=args.classes,
                             auxiliary=args.auxiliary, drop_path=args.drop_path, seed=args.seed,
                             source=str(genotype_path))
    except (KubenasError, OSError) as exc:
        return fail(str(exc))
    summary = {
        "output": str(output),
        "files": sorted(meta["files"].values()),
        "space": meta["space"],
        "architecture_hash": meta["architecture_hash"],
        "size": meta["size"],
        "phi": meta["phi"],
        "parameters": meta["parameters"],
        "multiply_adds": meta["multiply_adds"],
        "input_shape": "x".join(map(str, meta["input_shape"])),
        "suggested_input_shape": "x".join(map(str, meta["suggested_input_shape"])),
    }
    if "torchscript" in meta:
        summary["torchscript_reload_max_abs_diff"] = meta["torchscript"]["reload_max_abs_diff"]
    if "onnx" in meta:
        summary["onnx"] = meta["onnx"]
    print(json.dumps(summary, indent=2))
    return 0
