"""Pictures of a search: rewards over its trials and drawings of its cells.

Matplotlib with the Agg canvas, and no pyplot: every figure owns its canvas, so
nothing global changes and a controller may draw from any thread. No torch.
Callers import this module lazily (matplotlib takes a moment to load).

    plot_rewards(trials, "rewards.png")   # dots per trial, running best as a step line
    draw_cells(genotype, "cells.png")     # the normal and reduction cells as DAGs
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import MaxNLocator

from kubenas.spaces import space_of
from kubenas.spaces.nasbench201 import EDGES, NODES, parse_cellstr
from kubenas.spaces.nasnet import CELL_TYPES, cell_outputs

STATUS_COLORS = {"succeeded": "#2a9d8f", "stopped": "#e9a23b", "failed": "#d62828"}
OTHER_STATUS_COLOR = "#8d99ae"
BEST_COLOR = "#264653"


def _save(fig: Figure, path: str | Path) -> tuple[int, int]:
    canvas = FigureCanvasAgg(fig)
    fig.savefig(path, dpi=fig.dpi, format="png")
    return canvas.get_width_height()


# --- rewards -------------------------------------------------------------------------

def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch from a number, a datetime or an ISO 8601 string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return None


def completion_order(trials: list[dict]) -> tuple[list[dict], str]:
    """Trials in order of completion when every one has a readable `finished`,
    else in the order given; with the x-axis label that says which."""
    stamps = [_timestamp(t.get("finished")) for t in trials]
    if trials and all(s is not None for s in stamps):
        order = sorted(range(len(trials)), key=lambda i: stamps[i])
        return [trials[i] for i in order], "trial, in order of completion"
    return list(trials), "trial index"


def plot_rewards(trials: list[dict], path: str | Path, size: tuple[int, int] = (900, 500),
                 dpi: int = 100) -> tuple[int, int]:
    """A PNG of each trial's reward (coloured by status) with the running best.

    Each trial is a dict with `id`, `status` and `reward` (None when it failed),
    optionally `finished`. Trials without a reward are marked with an x at the
    bottom of the plot. Returns the image's (width, height) in pixels.
    """
    ordered, xlabel = completion_order(trials)
    fig = Figure(figsize=((size[0] + 0.25) / dpi, (size[1] + 0.25) / dpi), dpi=dpi)  # exactly size pixels
    ax = fig.add_subplot()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reward")
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    xs = list(range(1, len(ordered) + 1))
    statuses = list(STATUS_COLORS) + sorted({str(t.get("status")) for t in ordered} - set(STATUS_COLORS))
    for status in statuses:
        color = STATUS_COLORS.get(status, OTHER_STATUS_COLOR)
        mine = [(x, t) for x, t in zip(xs, ordered) if str(t.get("status")) == status]
        if not mine:
            continue
        scored = [(x, float(t["reward"])) for x, t in mine if t.get("reward") is not None]
        unscored = [x for x, t in mine if t.get("reward") is None]
        label = f"{status} ({len(mine)})"
        if scored:
            ax.scatter([x for x, _ in scored], [r for _, r in scored], s=22, color=color, label=label, zorder=3)
            label = None
        if unscored:
            # x in data units, y in axes units: pinned to the bottom whatever the rewards' range.
            ax.scatter(unscored, [0.03] * len(unscored), marker="x", s=30, color=color, label=label,
                       transform=ax.get_xaxis_transform(), zorder=3, clip_on=False)

    best_x, best_trial, steps_x, steps_y, best = None, None, [], [], -math.inf
    for x, t in zip(xs, ordered):
        if t.get("reward") is not None and float(t["reward"]) > best:
            best, best_x, best_trial = float(t["reward"]), x, t
        if best_x is not None:
            steps_x.append(x)
            steps_y.append(best)
    if best_trial is not None:
        ax.step(steps_x, steps_y, where="post", color=BEST_COLOR, linewidth=1.5, label="running best", zorder=2)
        ax.scatter([best_x], [best], marker="*", s=160, color=BEST_COLOR, zorder=4)
        ax.annotate(f"{best:.4g} ({best_trial.get('id')})", (best_x, best), textcoords="offset points",
                    xytext=(6, 6), fontsize=8, color=BEST_COLOR)
        title = f"{len(ordered)} trials, best reward {best:.4g} (trial {best_trial.get('id')})"
    elif ordered:
        title = f"{len(ordered)} trials, no reward yet"
    else:
        title = "no trials yet"
        ax.text(0.5, 0.5, "no trials yet", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_xlim(0, 1)
    ax.set_title(title)
    if ordered:
        ax.set_xlim(0.5, len(ordered) + 0.5)
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    return _save(fig, path)


# --- cells ---------------------------------------------------------------------------

# Sizes in inches: each panel's axes is drawn at one data unit per inch.
NODE_W, NODE_H = 0.95, 0.5
OP_W, OP_H, OP_DY = 1.05, 0.26, 0.31
OP_GAP = 0.35          # between an operation's label and the node it feeds
COLUMN_GAP = 2.75      # between the centres of two layers
ROW_GAP = 0.85         # between the centres of two nodes of one layer
MARGIN = 0.3
TITLE_H = 0.45
OP_FONT, NODE_FONT = 7.5, 9

OP_FAMILY_COLORS = (("none", "#eeeeee"), ("pool", "#fde2c4"), ("identity", "#d9ead3"),
                    ("skip", "#d9ead3"), ("conv", "#cfe2f3"))
NODE_COLORS = {"input": "#e3e3e3", "block": "#ffffff", "output": "#f6d5d5"}
# Edges take their source's colour, so each can be followed to where it starts.
SOURCE_COLORS = ("#1f5fa8", "#8e44ad", "#2e8b57", "#c0392b", "#b9770e", "#16a085", "#d35400", "#5d6d7e",
                 "#7d3c98", "#117864")
NONE_COLOR = "#a0a0a0"


def op_color(op: str) -> str:
    for key, color in OP_FAMILY_COLORS:
        if key in op:
            return color
    return "#ffffff"


@dataclass
class _Node:
    key: str
    label: str
    kind: str  # input | block | output
    sources: list[tuple[str, str | None]] = field(default_factory=list)  # (node key, op or None)
    depth: int = 0
    x: float = 0.0
    y: float = 0.0


@dataclass
class _Box:
    x: float
    y: float
    w: float
    h: float
    text: str
    face: str
    edge: str = "#555555"
    fontsize: float = NODE_FONT
    dashed: bool = False
    bold: bool = False
    kind: str = "node"  # node | op (an operation's label on an edge)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.x - self.w / 2, self.y - self.h / 2, self.x + self.w / 2, self.y + self.h / 2


@dataclass
class _Arrow:
    start: tuple[float, float]
    end: tuple[float, float]
    color: str
    rad: float = 0.0
    dashed: bool = False
    head: bool = True


@dataclass
class _CellPlan:
    title: str
    boxes: list[_Box]
    arrows: list[_Arrow]
    extent: tuple[float, float, float, float]  # x0, x1, y0, y1


def _block_cell(blocks: list[dict], outputs: list[int], darts: bool) -> list[_Node]:
    """outputs: the hidden states the cell concatenates (0, 1 the cell inputs, 2+j block j)."""
    nodes = [_Node("0", "$c_{k-2}$", "input"), _Node("1", "$c_{k-1}$", "input")]
    for b, block in enumerate(blocks):
        label = f"node {b}" if darts else f"block {b}\n{block['combine']}"
        nodes.append(_Node(str(2 + b), label, "block",
                           [(str(i), op) for i, op in zip(block["inputs"], block["ops"])]))
    nodes.append(_Node("out", "$c_{k}$\nconcat", "output", [(str(state), None) for state in outputs]))
    return nodes


def _nb201_cell(cell: str) -> list[_Node]:
    ops = parse_cellstr(cell)
    nodes = [_Node("0", "node 0\n(input)", "input")]
    for j in range(1, NODES):
        kind = "output" if j == NODES - 1 else "block"
        label = f"node {j}\n(output)" if kind == "output" else f"node {j}\nsum"
        sources = [(str(i), op) for (to, i), op in zip(EDGES, ops) if to == j]
        nodes.append(_Node(str(j), label, kind, sources))
    return nodes


def _layout(nodes: list[_Node]) -> None:
    """Layers by longest path from the inputs, left to right; within a layer,
    nodes ordered by the mean height of their sources (fewer crossings)."""
    by_key = {n.key: n for n in nodes}
    for n in nodes:  # nodes come in topological order
        n.depth = 1 + max((by_key[s].depth for s, _ in n.sources), default=-1)
    layers: dict[int, list[_Node]] = {}
    for n in nodes:
        layers.setdefault(n.depth, []).append(n)
    slots = max(sum(op is not None for _, op in n.sources) for n in nodes)
    row_gap = max(ROW_GAP, slots * OP_DY + 0.35)
    for depth in sorted(layers):
        layer = layers[depth]
        if depth > 0:
            layer.sort(key=lambda n: -sum(by_key[s].y for s, _ in n.sources) / max(1, len(n.sources)))
        for i, n in enumerate(layer):
            n.x = depth * COLUMN_GAP
            n.y = ((len(layer) - 1) / 2 - i) * row_gap
        if len(layer) == 1 and 0 < depth < max(layers):
            # A lone node in a middle layer steps aside, so edges that skip it pass by.
            layer[0].y = (row_gap / 2) * (1 if depth % 2 else -1)


def _bezier_points(p0, p2, rad: float, steps: int = 24):
    """Points of matplotlib's arc3 curve: control point off the chord's middle by rad x chord."""
    (x0, y0), (x2, y2) = p0, p2
    cx, cy = (x0 + x2) / 2 + rad * (y2 - y0), (y0 + y2) / 2 - rad * (x2 - x0)
    for i in range(1, steps):
        t = i / steps
        yield ((1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t * t * x2,
               (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t * t * y2)


def _route(p0, p2, obstacles: list[tuple[float, float, float, float]]) -> float:
    """The smallest bend (arc3 rad) that keeps an edge off every other box, or
    failing that the one that touches them least."""
    pad = 0.04
    best, fewest = 0.0, math.inf
    for rad in (0.0, 0.1, -0.1, 0.18, -0.18, 0.26, -0.26, 0.35, -0.35, 0.45, -0.45):
        hits = sum(x0 - pad <= x <= x1 + pad and y0 - pad <= y <= y1 + pad
                   for x, y in _bezier_points(p0, p2, rad, steps=40) for x0, y0, x1, y1 in obstacles)
        if hits == 0:
            return rad
        if hits < fewest:
            best, fewest = rad, hits
    return best


def _port(node: _Node, toward_y: float) -> tuple[float, float]:
    """Where an edge leaves a node: its right side, shifted toward the edge's target."""
    shift = max(-0.35, min(0.35, (toward_y - node.y) / 2)) * NODE_H
    return node.x + NODE_W / 2, node.y + shift


def _plan_cell(title: str, nodes: list[_Node]) -> _CellPlan:
    """Positions of every box and arrow of one cell, in inches."""
    _layout(nodes)
    by_key = {n.key: n for n in nodes}
    colors = {n.key: SOURCE_COLORS[i % len(SOURCE_COLORS)]
              for i, n in enumerate(x for x in nodes if x.kind != "output")}
    node_boxes = {n.key: _Box(n.x, n.y, NODE_W, NODE_H, n.label, NODE_COLORS[n.kind],
                              edge=colors.get(n.key, "#555555"), bold=n.kind != "block") for n in nodes}
    # Each operation's label sits just left of the node it feeds, higher sources on top.
    op_boxes: dict[tuple[str, int], tuple[str, _Box]] = {}
    for n in nodes:
        incoming = sorted(((s, op) for s, op in n.sources if op is not None), key=lambda s: -by_key[s[0]].y)
        x = n.x - NODE_W / 2 - OP_GAP - OP_W / 2
        for i, (src, op) in enumerate(incoming):
            y = n.y + ((len(incoming) - 1) / 2 - i) * OP_DY
            op_boxes[(n.key, i)] = (src, _Box(x, y, OP_W, OP_H, op, op_color(op), edge="#777777",
                                              fontsize=OP_FONT, dashed=op == "none", kind="op"))
    arrows: list[_Arrow] = []
    for (key, i), (src, box) in op_boxes.items():
        s, n = by_key[src], by_key[key]
        others = ([b.bounds for k, b in node_boxes.items() if k != src]
                  + [b.bounds for k, (_, b) in op_boxes.items() if k != (key, i)])
        start, end = _port(s, box.y), (box.x - OP_W / 2, box.y)
        color = NONE_COLOR if box.dashed else colors[src]
        arrows.append(_Arrow(start, end, color, _route(start, end, others), dashed=box.dashed, head=False))
        arrows.append(_Arrow((box.x + OP_W / 2, box.y), (n.x - NODE_W / 2, n.y), color, dashed=box.dashed))
    for n in nodes:
        for src, op in n.sources:
            if op is None:  # into the output concat: no operation on the way
                s = by_key[src]
                others = ([b.bounds for k, b in node_boxes.items() if k not in (src, n.key)]
                          + [b.bounds for _, b in op_boxes.values()])
                start, end = _port(s, n.y), (n.x - NODE_W / 2, n.y)
                arrows.append(_Arrow(start, end, colors[src], _route(start, end, others)))
    boxes = [b for _, b in op_boxes.values()] + list(node_boxes.values())
    xs = [v for b in boxes for v in b.bounds[0::2]]
    ys = [v for b in boxes for v in b.bounds[1::2]]
    for a in arrows:  # bent edges may reach beyond the boxes: keep them in the picture
        for x, y in _bezier_points(a.start, a.end, a.rad):
            xs.append(x)
            ys.append(y)
    extent = (min(xs) - MARGIN, max(xs) + MARGIN, min(ys) - MARGIN, max(ys) + MARGIN)
    return _CellPlan(title, boxes, arrows, extent)


def _draw_plan(ax, plan: _CellPlan) -> None:
    for a in plan.arrows:
        ax.add_patch(FancyArrowPatch(a.start, a.end, arrowstyle="-|>" if a.head else "-", mutation_scale=9,
                                     connectionstyle=f"arc3,rad={a.rad}", shrinkA=0, shrinkB=0,
                                     color=a.color, linewidth=1.0, linestyle="--" if a.dashed else "-",
                                     zorder=1))
    for b in plan.boxes:
        ax.add_patch(FancyBboxPatch((b.x - b.w / 2, b.y - b.h / 2), b.w, b.h,
                                    boxstyle="round,pad=0,rounding_size=0.08", facecolor=b.face,
                                    edgecolor=b.edge, linewidth=0.8 if b.kind == "op" else 1.4,
                                    linestyle="--" if b.dashed else "-", zorder=3))
        ax.text(b.x, b.y, b.text, ha="center", va="center", fontsize=b.fontsize, zorder=4,
                fontweight="bold" if b.bold else "normal", linespacing=1.1)
    ax.set_title(plan.title, fontsize=11)
    ax.set_xlim(plan.extent[0], plan.extent[1])
    ax.set_ylim(plan.extent[2], plan.extent[3])
    ax.set_aspect("equal")
    ax.axis("off")


def cell_graphs(genotype: dict) -> list[tuple[str, list[_Node]]]:
    """(title, nodes) for each cell of a genotype, validated against its space."""
    genotype = space_of(genotype).validate_architecture(genotype)
    if genotype["space"] == "nasbench201":
        return [("cell", _nb201_cell(genotype["cell"]))]
    darts = genotype["space"] == "darts"
    graphs = []
    for kind in CELL_TYPES:
        blocks = genotype[kind]
        graphs.append((f"{kind} cell", _block_cell(blocks, cell_outputs(genotype, kind), darts)))
    return graphs


def cell_plans(genotype: dict) -> list[_CellPlan]:
    """Every box and arrow of each cell's drawing, in inches: what draw_cells renders."""
    return [_plan_cell(title, nodes) for title, nodes in cell_graphs(genotype)]


def _subtitle(genotype: dict) -> str:
    cell_hash = space_of(genotype).hash({**genotype, "hparams": {}})
    text = f"{genotype['space']} genotype {cell_hash}"
    hparams = genotype.get("hparams") or {}
    if hparams:
        text += "   hparams: " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hparams.items()))
    return text


def draw_cells(genotype: dict, path: str | Path, dpi: int = 110) -> tuple[int, int]:
    """A PNG of the genotype's cells side by side (normal and reduction; the single
    cell for nasbench201): inputs on the left, each block or node with the
    operations on its incoming edges (coloured by the edge's source), and the
    output concat. Returns the image's (width, height) in pixels."""
    plans = cell_plans(genotype)
    widths = [p.extent[1] - p.extent[0] for p in plans]
    heights = [p.extent[3] - p.extent[2] for p in plans]
    panel_h = max(heights)
    # Whole pixels (+1/4, safe whether matplotlib rounds or truncates): the PNG has the size returned.
    fig_w = (math.ceil((sum(widths) + MARGIN * (len(plans) + 1)) * dpi) + 0.25) / dpi
    fig_h = (math.ceil((panel_h + 2 * TITLE_H + MARGIN) * dpi) + 0.25) / dpi
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    left = MARGIN
    for plan, w, h in zip(plans, widths, heights):
        # One data unit per inch: each axes is exactly as large as its cell's extent.
        bottom = MARGIN + (panel_h - h) / 2
        ax = fig.add_axes((left / fig_w, bottom / fig_h, w / fig_w, h / fig_h))
        _draw_plan(ax, plan)
        left += w + MARGIN
    fig.suptitle(_subtitle(genotype), fontsize=10, y=1 - 0.12 / fig_h, va="top")
    return _save(fig, path)
