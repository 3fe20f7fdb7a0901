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
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="trained weights (a model.safetensors of a final model or an earlier export): the "
                             "network is built as the file describes it, carries these weights and its input "
                             "normalisation; --cells, --channels, --classes may be left out")
    parser.add_argument("--pareto", action="store_true",
                        help="export every member of the Pareto front (a multi-objective search's results directory, "
                             "its pareto.csv), each into OUTPUT/TRIAL_ID")


def default_output(source: str, genotype_path: Path | str) -> Path:
    if genotype_path == "-":
        return Path("export")
    genotype_path = Path(genotype_path)
    if Path(source).is_file():
        return Path(f"{genotype_path.stem}-export")
    return genotype_path.parent / "export"


def run(command: str, args: argparse.Namespace) -> int:
    if args.pareto:
        return _run_pareto(args)
    try:
        from kubenas import export

        genotype_path = export.resolve_source(args.source, args.results)
        genotype = read_genotype(str(genotype_path))
        output = Path(args.output) if args.output else default_output(args.source, genotype_path)
        if args.weights:
            size, trained = export.trained_options(
                args.weights, genotype, args.cells, args.channels, args.phi,
                args.classes if args.classes != 10 else None,  # 10: the default, not a choice
                parse_shape(args.input) if args.input != "3x32x32" else None)
            meta = export.export(genotype, output, args.format, size, auxiliary=args.auxiliary,
                                 drop_path=args.drop_path, seed=args.seed, source=str(genotype_path),
                                 **{"num_classes": args.classes, **trained})
        else:
            size = export.plan_size(genotype, args.cells, args.channels, args.penultimate, args.phi,
                                    parse_shape(args.input))
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


def _pareto_members(source: str, results_root: str) -> tuple[Path, list[dict]]:
    """The results directory and its front's members (trial, metrics, genotype) from pareto.csv."""
    import csv

    from kubenas.spaces import load_genotype

    directory = Path(source) if Path(source).is_dir() else Path(results_root) / source
    path = directory / "pareto.csv"
    if not path.is_file():
        raise KubenasError(f"{source}: no pareto.csv there; --pareto takes the results directory (or name) of a "
                           "search with several objective.metrics")
    members = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("on_front") == "1":
                genotype = load_genotype(row["genotype"], f"{path} trial {row['trial']}")
                metrics = {k: float(v) for k, v in row.items()
                           if k not in ("trial", "front", "on_front", "hash", "genotype")}
                members.append({"trial": row["trial"], "metrics": metrics, "genotype": genotype})
    if not members:
        raise KubenasError(f"{path}: no trial is on the front yet (no trial has succeeded)")
    return directory, members


def _run_pareto(args: argparse.Namespace) -> int:
    """Every member of the front, each exported at the same size into OUTPUT/TRIAL."""
    try:
        from kubenas import export

        directory, members = _pareto_members(args.source, args.results)
        output = Path(args.output) if args.output else directory / "export-pareto"
        written = []
        for member in members:
            size = export.plan_size(member["genotype"], args.cells, args.channels, args.penultimate, args.phi,
                                    parse_shape(args.input))
            meta = export.export(member["genotype"], output / member["trial"], args.format, size,
                                 num_classes=args.classes, auxiliary=args.auxiliary, drop_path=args.drop_path,
                                 seed=args.seed, source=str(directory / "pareto.csv"))
            written.append({"trial": member["trial"], "output": str(output / member["trial"]),
                            "search_metrics": member["metrics"], "parameters": meta["parameters"],
                            "multiply_adds": meta["multiply_adds"], "architecture_hash": meta["architecture_hash"]})
    except (KubenasError, OSError) as exc:
        return fail(str(exc))
    print(json.dumps({"output": str(output), "members": written}, indent=2))
    return 0
