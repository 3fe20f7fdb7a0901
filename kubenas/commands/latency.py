"""`kubenas latency-table`: time every operation of a search space on this device.

    kubenas latency-table --device cpu --space nasbench201 --resolution 32 --output cpu-nb201.json
    kubenas latency-table --device cuda --space darts --resolution 32 --channels 36 --cells-per-stage 6

The table (JSON) prices any genotype of the space at the network size given here;
a search names it in `objective.latency.table` and then scores latency on the
device the table was made on, whatever device its trainers have.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    from kubenas.commands.common import whole_number_in

    parser.add_argument("--device", required=True, help="cpu, cuda or cuda:N: the device to time on")
    parser.add_argument("--space", required=True, choices=["nasbench201", "darts", "nasnet"], help="the search space")
    parser.add_argument("--resolution", required=True, type=whole_number_in(1, 4096),
                        help="input height and width in pixels, as deployed")
    parser.add_argument("--batch", type=whole_number_in(1, 4096), default=1, help="images per forward pass (default 1)")
    parser.add_argument("--channels", type=whole_number_in(1, 4096), default=16, help="F: initial filters (default 16)")
    parser.add_argument("--cells-per-stage", type=whole_number_in(1, 64), default=5, help="N (default 5)")
    parser.add_argument("--in-channels", type=whole_number_in(1, 64), default=3, help="image channels (default 3)")
    parser.add_argument("--classes", type=whole_number_in(2, 100_000), default=10, help="output classes (default 10)")
    parser.add_argument("--blocks", type=whole_number_in(1, 10), default=None,
                        help="nasnet/darts: blocks per cell (default: the space's)")
    parser.add_argument("--operations", nargs="+", metavar="OP", help="only these operations (default: all the space's)")
    parser.add_argument("--repeats", type=whole_number_in(1, 10_000), default=20,
                        help="timed runs per entry; the median is kept (default 20)")
    parser.add_argument("--statistic", choices=["median", "min"], default="median",
                        help="kept per entry: the median of the timed runs, or their minimum (steadier on a busy machine)")
    parser.add_argument("--calibrate", type=whole_number_in(0, 1000), default=8,
                        help="also time this many random whole networks and scale the table's sums by their median "
                             "ratio of measured to summed latency (default 8; 0: pure sums)")
    parser.add_argument("--copies", type=whole_number_in(1, 64), default=1,
                        help="cycle through this many copies of each entry's module and inputs, so that its data is "
                             "not all in the cache from the run before, as inside a network (default 1)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall (default; what a deployment sees) or cpu: the process's CPU time, which other "
                             "work on a shared machine does not inflate (CPU, one thread)")
    parser.add_argument("--threads", type=whole_number_in(1, 1024), default=None,
                        help="CPU threads torch may use (default: torch's choice; set it as deployed)")
    parser.add_argument("--output", "-o", metavar="FILE", help="write the table to FILE instead of stdout")


def _unwritable(path: str) -> str:
    """Why the table could not be written to `path` ("": it could)."""
    if os.path.isdir(path):
        return "is a directory; give a file name"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"the directory {parent} does not exist"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "not writable; choose a file you can write"
    try:  # a real write: permission bits say nothing to root, nor about a read-only file system
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        return f"{parent} is not writable ({exc.strerror or exc}); choose a file you can write"
    return ""


def run(command: str, args: argparse.Namespace) -> int:
    from kubenas.commands.common import fail
    from kubenas.errors import KubenasError

    if args.space == "nasbench201" and args.blocks is not None:
        return fail("--blocks: does not apply to nasbench201 (its cell is fixed)")
    from kubenas.spec import SKELETON_REDUCTIONS

    # The table's networks have the cifar layout (a stride-1 stem, two reductions), as training's default.
    halvings = SKELETON_REDUCTIONS["cifar"]
    if args.resolution < 2 ** halvings:
        return fail(f"--resolution: {args.resolution} pixels is too small for the network, which halves its input "
                    f"{halvings} times; use at least {2 ** halvings}")
    if args.output:  # refused now, not after minutes of timing
        unwritable = _unwritable(args.output)
        if unwritable:
            return fail(f"--output {args.output}: {unwritable}")
    if args.operations:
        from kubenas.nn.ops import OPS_BY_SPACE

        unknown = [op for op in args.operations if op not in OPS_BY_SPACE[args.space]]
        if unknown:
            return fail(f"--operations: {unknown} not in the {args.space} space; choose from {list(OPS_BY_SPACE[args.space])}")
    import torch

    from kubenas.nn.latency_table import NetworkSize, build_table

    device = args.device
    try:
        dev = torch.device(device)
    except RuntimeError:
        return fail(f"--device: {device!r} is not accepted; use cpu, cuda or cuda:N")
    if dev.type not in ("cpu", "cuda"):
        return fail(f"--device: {device!r} is not accepted; use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        return fail(f"--device: {device} asked for, but torch sees no CUDA device here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return fail(f"--device: {device} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s) "
                    f"here; use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if args.clock == "cpu" and (dev.type != "cpu" or (args.threads or 0) != 1):
        return fail("--clock cpu: only for --device cpu with --threads 1 (CPU time sums every thread)")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = NetworkSize(space=args.space, resolution=args.resolution, in_channels=args.in_channels,
                       num_classes=args.classes, channels=args.channels, cells_per_stage=args.cells_per_stage,
                       blocks=args.blocks, batch=args.batch)
    try:
        table = build_table(size, device, repeats=args.repeats, operations=args.operations, statistic=args.statistic,
                            clock=args.clock, copies=args.copies, calibrate=args.calibrate)
    except KubenasError as exc:
        return fail(str(exc))
    if dev.type == "cuda":
        table["device_name"] = torch.cuda.get_device_name(dev)
    table["threads"] = torch.get_num_threads()
    text = json.dumps(table, indent=1) + "\n"
    if args.output:
        from pathlib import Path

        from kubenas.files import write_atomic

        try:  # minutes of timing: never leave half a table where a search would read it
            write_atomic(Path(args.output), text.encode())
        except OSError as exc:
            return fail(f"--output {args.output}: {exc.strerror or exc}")
        print(f"{len(table['entries'])} entries timed on {device} -> {args.output}", file=sys.stderr)
        return 0
    sys.stdout.write(text)
    return 0
