"""Latency lookup tables: a network's latency on a device without the device in the loop.

The ProxylessNAS / FBNet approach: time every operation of a search space once, at
every shape a network of the given size gives it, on the target device; a
genotype's latency is then the sum of its parts' entries. A trainer on a GPU can
so score architectures for, say, a CPU server.

Optionally (`calibrate`) a few whole networks are timed too, and the sum is scaled by
the median ratio of measured to summed latency (parts timed alone miss what a network
adds around them); the scale changes no ranking.

A network is decomposed into *units* (`network_units`): the cell operations by
(name, channels, spatial size, stride), and everything around them (stem,
reductions, the cells' input projections, additions, concatenations, the head)
by the shapes they see. The decomposition mirrors kubenas/nn/networks.py exactly:
its units' parameters add up to the network's (a test checks it). Units are keys
such as `op(nor_conv_3x3,16,32,1)`; the table maps keys to median seconds.

`network_units`, `space_units` and `predict_latency` are pure (no I/O, nothing
run); `time_units` builds and runs the modules, `load_table` reads a file. Tables
are JSON, never pickle. They model the cifar skeleton (training.skeleton's default).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

from kubenas.errors import KubenasError
from kubenas.files import read_bounded

FORMAT = 1
MAX_TABLE_BYTES = 16 << 20


class LatencyTableError(KubenasError):
    """A table that cannot be read, or cannot price a genotype; the message says why."""


@dataclass(frozen=True)
class NetworkSize:
    """What a table was made for: the deployed network's macro settings and input."""

    space: str = "nasbench201"
    resolution: int = 32
    in_channels: int = 3
    num_classes: int = 10
    channels: int = 16  # F
    cells_per_stage: int = 5  # N
    stem_multiplier: int = 3  # nasnet/darts only, as ModelConfig
    blocks: Optional[int] = None  # nasnet/darts: blocks per cell (default: the space's)
    batch: int = 1


def unit(kind: str, *args: Any) -> str:
    return f"{kind}({','.join(str(a) for a in args)})"


def _half(h: int) -> int:
    """Every stride-2 operation here (3x3 pad 1, 1x1, pools with pad k//2, FactorizedReduce) gives ceil(h/2)."""
    return (h + 1) // 2


# --- the decomposition (pure) -----------------------------------------------------------------
def network_units(genotype: dict, size: NetworkSize) -> list[str]:
    """The units one forward pass of `build_model(genotype, size's ModelConfig)` runs, in order."""
    if genotype.get("space") == "nasbench201":
        from kubenas.spaces.nasbench201 import parse_cellstr

        return _nb201_units(parse_cellstr(genotype["cell"]), size)
    from kubenas.spaces.nasnet import cell_outputs

    cells = {kind: (genotype[kind], cell_outputs(genotype, kind)) for kind in ("normal", "reduction")}
    return _block_network_units(cells, size)


def _nb201_units(edge_ops: list[str], size: NetworkSize) -> list[str]:
    c, h = size.channels, size.resolution
    units = [unit("stem", size.in_channels, c, h)]
    for stage in range(3):
        if stage > 0:
            units.append(unit("resblock", c, 2 * c, h))
            c, h = 2 * c, _half(h)
        for _ in range(size.cells_per_stage):
            units += [unit("op", name, c, h, 1) for name in edge_ops]
            units += [unit("add", c, h)] * len(edge_ops)  # node j sums its edges, starting from 0 + first
    units.append(unit("nb201head", c, h, size.num_classes))
    return units


def _layout(n: int) -> list[str]:
    return ["normal"] * n + ["reduction"] + ["normal"] * n + ["reduction"] + ["normal"] * n


def _block_network_units(cells: dict[str, tuple[list[dict], list[int]]], size: NetworkSize) -> list[str]:
    c, h = size.channels, size.resolution
    c_stem = size.stem_multiplier * c
    units = [unit("cellstem", size.in_channels, c_stem, h)]
    c_pp, c_p, h_pp, h_p = c_stem, c_stem, h, h
    reduction_prev = False
    for kind in _layout(size.cells_per_stage):
        reduction = kind == "reduction"
        if reduction:
            c *= 2
        blocks, outputs = cells[kind]
        units.append(unit("fr", c_pp, c, h_pp) if reduction_prev else unit("rcb", c_pp, c, 1, 1, h_pp))
        units.append(unit("rcb", c_p, c, 1, 1, h_p))
        h_in = h_p
        h_out = _half(h_in) if reduction else h_in
        channels, heights = [c, c], [h_in, h_in]
        for block in blocks:
            for src, name in zip(block["inputs"], block["ops"]):
                if channels[src] != c:  # a concat block's 2c channels are projected first
                    units.append(unit("rcb", channels[src], c, 1, 1, heights[src]))
                stride = 2 if reduction and src < 2 else 1
                units.append(unit("op", name, c, heights[src], stride))
            concat = block.get("combine", "add") == "concat"
            units.append(unit("cat", 2, 2 * c, h_out) if concat else unit("add", c, h_out))
            channels.append(2 * c if concat else c)
            heights.append(h_out)
        for state in outputs:
            if reduction and state < 2:
                units.append(unit("fr", c, c, h_in))
        out_channels = sum(channels[state] for state in outputs)
        units.append(unit("cat", len(outputs), out_channels, h_out))
        c_pp, c_p, h_pp, h_p = c_p, out_channels, h_p, h_out
        reduction_prev = reduction
    units.append(unit("head", c_p, h_p, size.num_classes))
    return units


def space_units(size: NetworkSize, operations: Optional[Iterable[str]] = None) -> list[str]:
    """Every unit a network of this size can run, whatever the genotype (the table's rows)."""
    from kubenas.nn.ops import OPS_BY_SPACE

    ops = list(operations) if operations is not None else list(OPS_BY_SPACE[size.space])
    units: dict[str, None] = {}

    def add(*keys: str) -> None:
        units.update(dict.fromkeys(keys))

    c, h = size.channels, size.resolution
    if size.space == "nasbench201":
        add(unit("stem", size.in_channels, c, h))
        for stage in range(3):
            if stage > 0:
                add(unit("resblock", c, 2 * c, h))
                c, h = 2 * c, _half(h)
            add(*(unit("op", name, c, h, 1) for name in ops), unit("add", c, h))
        add(unit("nb201head", c, h, size.num_classes))
        return list(units)
    from kubenas.spaces import build_space

    space = build_space({"type": size.space, "blocks": size.blocks})
    b = space.blocks if hasattr(space, "blocks") else (size.blocks or 5)
    # A cell's output is 1..b+2 states of c or 2c channels: k*c channels, k in 1..2(b+2).
    widths = range(1, 2 * (b + 2) + 1)
    c_stem = size.stem_multiplier * c
    add(unit("cellstem", size.in_channels, c_stem, h))
    possible_pp, possible_p, h_pp, h_p = {c_stem}, {c_stem}, h, h
    reduction_prev = False
    for kind in _layout(size.cells_per_stage):
        reduction = kind == "reduction"
        if reduction:
            c *= 2
        add(*((unit("fr", cin, c, h_pp) if reduction_prev else unit("rcb", cin, c, 1, 1, h_pp))
              for cin in possible_pp))
        add(*(unit("rcb", cin, c, 1, 1, h_p) for cin in possible_p))
        h_in = h_p
        h_out = _half(h_in) if reduction else h_in
        for name in ops:
            add(unit("op", name, c, h_in, 2 if reduction else 1), unit("op", name, c, h_out, 1))
        add(unit("rcb", 2 * c, c, 1, 1, h_out), unit("add", c, h_out), unit("cat", 2, 2 * c, h_out))
        if reduction:
            add(unit("fr", c, c, h_in))
        add(*(unit("cat", parts, k * c, h_out) for k in widths for parts in range((k + 1) // 2, min(k, b + 2) + 1)))
        possible_pp, possible_p = possible_p, {k * c for k in widths}
        h_pp, h_p = h_p, h_out
        reduction_prev = reduction
    add(*(unit("head", cin, h_p, size.num_classes) for cin in possible_p))
    return list(units)


# --- tables (pure) ----------------------------------------------------------------------------
def make_table(size: NetworkSize, device: str, torch_version: str, seconds: dict[str, float],
               repeats: int, statistic: str = "median") -> dict:
    return {"format": FORMAT, "kind": "kubenas-latency-table", "device": device, "torch": torch_version,
            "repeats": repeats, "statistic": statistic, **asdict(size), "entries": dict(sorted(seconds.items()))}


def table_size(table: dict) -> NetworkSize:
    return NetworkSize(**{k: table[k] for k in NetworkSize.__dataclass_fields__ if k in table})


def check_prices_space(table: dict, space: Any) -> None:
    """Raise LatencyTableError unless `table` prices every genotype of the search's `space`
    (a built SearchSpace): the same space, blocks per cell and operations."""
    size = table_size(table)
    if size.space != space.name:
        raise LatencyTableError(f"the table is for the {size.space} space; the search's is {space.name}")
    search_blocks = getattr(space, "blocks", None)  # None: nasbench201's fixed cell
    if search_blocks is not None:
        from kubenas.spaces import build_space

        # The table's own units are checked below with its own blocks, so a mismatch would pass there.
        table_blocks = build_space({"type": size.space, "blocks": size.blocks}).blocks
        if table_blocks != search_blocks:
            raise LatencyTableError(f"the table is for {table_blocks} blocks per cell; the search's searchSpace.blocks "
                                    f"is {search_blocks}; make one with kubenas latency-table --blocks {search_blocks}")
    missing = [k for k in space_units(size, getattr(space, "operations", None)) if k not in table["entries"]]
    if missing:
        raise LatencyTableError(f"the table has no entry for {missing[0]} ({len(missing)} missing); make it "
                                f"with kubenas latency-table for this space's operations")


def predict_latency(table: dict, genotype: dict) -> float:
    """Seconds of one forward pass of the genotype's network (the table's size, batch and device)."""
    size = table_size(table)
    if genotype.get("space") != size.space:
        raise LatencyTableError(f"latency table: made for the {size.space} space; the genotype is "
                                f"{genotype.get('space')!r}")
    entries = table["entries"]
    scale = (table.get("calibration") or {}).get("scale", 1.0)
    total = 0.0
    for key in network_units(genotype, size):
        seconds = entries.get(key)
        if seconds is None:
            raise LatencyTableError(
                f"latency table: no entry for {key} (made for {size.space}, channels {size.channels}, "
                f"{size.cells_per_stage} cells per stage, resolution {size.resolution}); make a new one with "
                f"kubenas latency-table")
        total += seconds
    return total * scale


def parse_table(text: str | bytes, where: str = "latency table") -> dict:
    """A table from JSON text, checked enough that `predict_latency` cannot trip on it."""
    try:
        table = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LatencyTableError(f"{where}: not JSON ({exc})") from None
    if not isinstance(table, dict) or table.get("kind") != "kubenas-latency-table":
        raise LatencyTableError(f"{where}: not a kubenas latency table (make one with kubenas latency-table)")
    if table.get("format") != FORMAT:
        raise LatencyTableError(f"{where}: format {table.get('format')!r} is not accepted; this kubenas reads {FORMAT}")
    entries = table.get("entries")
    if not isinstance(entries, dict) or not entries or not all(
            _is_number(v) and math.isfinite(v) and v >= 0 for v in entries.values()):
        raise LatencyTableError(f"{where}: entries must map units to non-negative seconds")
    calibration = table.get("calibration")
    scale = 1.0 if calibration is None else calibration.get("scale") if isinstance(calibration, dict) else None
    if not (_is_number(scale) and math.isfinite(scale) and scale > 0):
        raise LatencyTableError(f"{where}: calibration.scale must be a number above 0")
    try:
        size = table_size(table)
    except TypeError as exc:
        raise LatencyTableError(f"{where}: {exc}") from None
    for name, value in asdict(size).items():
        if name not in ("space", "blocks") and not (type(value) is int and value >= 1):
            raise LatencyTableError(f"{where}: {name} {value!r} is not accepted; a whole number from 1")
    if size.blocks is not None and not (type(size.blocks) is int and 1 <= size.blocks <= 10):
        raise LatencyTableError(f"{where}: blocks {size.blocks!r} is not accepted; a whole number from 1 to 10")
    from kubenas.spaces import SPACES

    if not isinstance(size.space, str) or size.space not in SPACES:  # a list is not hashable
        raise LatencyTableError(f"{where}: space {size.space!r} is not accepted; choose one of {sorted(SPACES)}")
    return table


def _is_number(value: Any) -> bool:
    """An int or a float; JSON's true is a bool, which Python counts as the int 1."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_table(path: str) -> dict:
    where = f"latency table {path}"
    return parse_table(read_bounded(path, MAX_TABLE_BYTES, where, error=LatencyTableError), where)


# --- timing (torch) ---------------------------------------------------------------------------
def unit_module(key: str, size: NetworkSize) -> tuple[Any, list[tuple[int, ...]]]:
    """The module a unit runs and the shapes of its inputs (batch first)."""
    from torch import nn

    from kubenas.nn.networks import ResidualBlock
    from kubenas.nn.ops import OPS_BY_SPACE, FactorizedReduce, ReLUConvBN

    kind, _, rest = key.partition("(")
    args = rest[:-1].split(",")
    if kind == "op":
        name, c, h, stride = args[0], int(args[1]), int(args[2]), int(args[3])
        return OPS_BY_SPACE[size.space][name](c, stride), [(c, h, h)]
    nums = [int(a) for a in args]
    if kind in ("stem", "cellstem"):
        cin, cout, h = nums
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)), [(cin, h, h)]
    if kind == "resblock":
        cin, cout, h = nums
        return ResidualBlock(cin, cout), [(cin, h, h)]
    if kind == "rcb":
        cin, cout, k, stride, h = nums
        return ReLUConvBN(cin, cout, k, stride, k // 2), [(cin, h, h)]
    if kind == "fr":
        cin, cout, h = nums
        return FactorizedReduce(cin, cout), [(cin, h, h)]
    if kind == "add":
        c, h = nums
        return _combiners()[0](), [(c, h, h), (c, h, h)]
    if kind == "cat":
        parts, c, h = nums
        widths = [c // parts + (1 if i < c % parts else 0) for i in range(parts)]
        return _combiners()[1](), [(w, h, h) for w in widths]
    if kind in ("head", "nb201head"):
        c, h, classes = nums
        layers = [nn.BatchNorm2d(c), nn.ReLU(inplace=False)] if kind == "nb201head" else []
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, classes)), [(c, h, h)]
    raise LatencyTableError(f"latency table: unknown unit {key!r}")


@functools.lru_cache(maxsize=None)
def _combiners() -> tuple[type, type]:
    """The additions and concatenations cells do, as modules (defined here so the pure part needs no torch)."""
    import torch
    from torch import nn

    class Add(nn.Module):
        def forward(self, a, b):
            return a + b

    class Cat(nn.Module):
        def forward(self, *parts):
            return torch.cat(parts, dim=1)

    return Add, Cat


STATISTICS = {"median": statistics.median, "min": min}
# wall: what a deployment sees. cpu: the process's CPU time, which other work on a shared
# machine does not inflate (one thread only: with more it sums the threads' time).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_call(fn, device: Any, repeats: int, warmup: int = 2, statistic: str = "median",
              clock: str = "wall") -> float:
    """Seconds of fn() on the device (CUDA synchronised around each call): the median of the
    timed runs, or their minimum (steadier on a machine that other work shares)."""
    import torch

    cuda = getattr(device, "type", str(device)) == "cuda"
    if cuda and clock != "wall":
        raise LatencyTableError("latency table: a CUDA device is timed by the wall clock only")
    now = CLOCKS[clock]
    times = []
    # An untrained network's activations shrink layer by layer to denormal floats, which
    # CPUs handle many times slower; a trained one's (real BN statistics) do not. Flush
    # them to zero so that the timings are those of the deployed network.
    flushed = torch.set_flush_denormal(True)
    try:
        times = _timed_runs(fn, cuda, device, now, warmup, repeats)
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    return STATISTICS[statistic](times)


def _timed_runs(fn, cuda: bool, device: Any, now, warmup: int, repeats: int) -> list[float]:
    import torch

    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(device)
            began = now()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(now() - began)
    return times


def time_units(keys: Iterable[str], size: NetworkSize, device: str = "cpu", repeats: int = 20,
               statistic: str = "median", clock: str = "wall", seed: int = 0, copies: int = 1) -> dict[str, float]:
    """Seconds of each unit at the table's batch size, in inference mode. copies > 1 cycles
    through that many copies of the unit and its inputs, so that, as inside a network, its
    weights and inputs are not all still in the cache from the previous run."""
    import torch

    torch.manual_seed(seed)
    dev = torch.device(device)
    seconds = {}
    for key in keys:
        runs = []
        for _ in range(max(1, copies)):
            module, shapes = unit_module(key, size)
            runs.append((module.to(dev).eval(), [torch.randn(size.batch, *shape, device=dev) for shape in shapes]))
        turn = itertools.cycle(runs)

        def call() -> Any:
            module, inputs = next(turn)
            return module(*inputs)

        seconds[key] = time_call(call, dev, repeats, statistic=statistic, clock=clock)
    return seconds


def build_table(size: NetworkSize, device: str = "cpu", repeats: int = 20,
                operations: Optional[Iterable[str]] = None, statistic: str = "median", clock: str = "wall",
                copies: int = 1, calibrate: int = 0, seed: int = 0) -> dict:
    """Time every unit; with `calibrate` > 0 also that many random whole networks, and keep the
    median ratio of their measured to their summed latency as the table's `scale`: a sum of
    parts timed alone misses what a network adds around them (its Python, colder caches)."""
    import random

    import torch

    keys = space_units(size, operations)
    seconds = time_units(keys, size, device, repeats, statistic, clock, copies=copies)
    table = make_table(size, device, torch.__version__, seconds, repeats, statistic)
    table.update(clock=clock, copies=copies)
    if calibrate > 0:
        from kubenas.spaces import build_space

        space = build_space({"type": size.space, "operations": list(operations) if operations else None,
                             **({"blocks": size.blocks} if size.blocks else {})})
        rng = random.Random(f"calibrate-{seed}")
        ratios = []
        for _ in range(calibrate):
            genotype = space.sample(rng)
            measured = measure_network(genotype, size, device, repeats, statistic, clock)
            ratios.append(measured / predict_latency(table, genotype))
        table["calibration"] = {"networks": calibrate, "scale": statistics.median(ratios)}
    return table


def measure_network(genotype: dict, size: NetworkSize, device: str = "cpu", repeats: int = 20,
                    statistic: str = "median", clock: str = "wall") -> float:
    """Seconds of one forward pass of the whole network (what the table predicts)."""
    import torch

    from kubenas.nn.networks import ModelConfig, build_model

    dev = torch.device(device)
    cfg = ModelConfig(channels=size.channels, cells_per_stage=size.cells_per_stage, num_classes=size.num_classes,
                      in_channels=size.in_channels, stem_multiplier=size.stem_multiplier)
    model = build_model(genotype, cfg).to(dev).eval()
    x = torch.randn(size.batch, size.in_channels, size.resolution, size.resolution, device=dev)
    return time_call(lambda: model(x), dev, repeats, statistic=statistic, clock=clock)
