"""Whole networks: the CIFAR-style NASNet/DARTS skeleton and NAS-Bench-201's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kubenas.nn.cells import NB201Cell, BlockCell
from kubenas.nn.ops import OPS_BY_SPACE, ReLUConvBN
from kubenas.spaces import space_of
from kubenas.spaces.nasbench201 import parse_cellstr
from kubenas.spaces.nasnet import cell_outputs
from kubenas.spec import SKELETON_REDUCTIONS  # stride-2 steps of each skeleton


@dataclass(frozen=True)
class ModelConfig:
    """Macro settings: N cells per stage and F initial filters (NASNet's 'N @ F')."""

    channels: int = 16  # F
    cells_per_stage: int = 2  # N
    num_classes: int = 10
    in_channels: int = 3
    stem_multiplier: int = 3
    auxiliary: bool = False
    drop_path: float = 0.0
    skeleton: str = "cifar"  # cifar | imagenet: the layout before the N-cell stages (cell spaces only)


# NASNet's ImageNet stem: a 3x3 stride-2 convolution with 32 filters (the Mobile network's;
# Zoph et al. 2018, figure 2), then two reduction cells at F/4 and F/2 filters.
IMAGENET_STEM_FILTERS = 32


def smallest_input(skeleton: str) -> int:
    """The smallest height and width a skeleton reduces to at least one pixel."""
    return 2 ** SKELETON_REDUCTIONS[skeleton]


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier at 2/3 depth; adaptive pooling so any input size works."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False), nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=False),
            nn.Conv2d(128, 256, 2, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class Network(nn.Module):
    """Shared tail: returns logits, or (logits, aux_logits) while training with a head."""

    cells: nn.ModuleList
    aux_head: AuxiliaryHead | None
    aux_index: int

    def set_drop_path(self, prob: float) -> None:
        """ScheduledDropPath's depth scaling: cell i of n drops with prob * (i + 1) / n,
        so the last cell gets `prob` (the reference counts reduction cells as cells)."""
        for i, cell in enumerate(self.cells):
            cell.drop_prob = prob * (i + 1) / len(self.cells)

    def _finish(self, x: torch.Tensor, aux: torch.Tensor | None):
        logits = self.classifier(torch.flatten(self.pool(x), 1))
        return (logits, aux) if aux is not None else logits


class CellNetwork(Network):
    """stem, N normal cells, reduction, N normal, reduction, N normal (NASNet CIFAR).

    The imagenet skeleton (NASNet's ImageNet layout) replaces the stride-1 stem with a
    3x3 stride-2 convolution and two reduction cells at F/4 and F/2 filters, so that a
    224-pixel input reaches the first stage at 28 pixels and the classifier at 7."""

    def __init__(self, genotype: dict, cfg: ModelConfig):
        super().__init__()
        if cfg.skeleton not in SKELETON_REDUCTIONS:
            raise ValueError(f"training.skeleton: {cfg.skeleton!r} is not accepted; choose one of "
                             f"{sorted(SKELETON_REDUCTIONS)}")
        ops = OPS_BY_SPACE[genotype["space"]]
        c = cfg.channels
        self.stem_cells = nn.ModuleList()  # not in self.cells: no drop path, no aux index shift
        reduction_prev = False
        if cfg.skeleton == "imagenet":
            c_stem = IMAGENET_STEM_FILTERS
            self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, c_stem, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(c_stem))
            c_pp, c_p = c_stem, c_stem
            for scale in (4, 2):  # the reference's filter scaling 1/rate^2, then 1/rate
                cell = BlockCell(genotype["reduction"], ops, c_pp, c_p, max(1, c // scale), True, reduction_prev,
                                 cell_outputs(genotype, "reduction"))
                self.stem_cells.append(cell)
                reduction_prev = True
                c_pp, c_p = c_p, cell.out_channels
        else:
            c_stem = cfg.stem_multiplier * c
            self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, c_stem, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(c_stem))
            c_pp, c_p = c_stem, c_stem
        self.cells = nn.ModuleList()
        n = cfg.cells_per_stage
        layout = ["normal"] * n + ["reduction"] + ["normal"] * n + ["reduction"] + ["normal"] * n
        self.aux_index = 2 * n + 1  # the cell after the second reduction's stage input
        self.aux_head = None
        for index, kind in enumerate(layout):
            reduction = kind == "reduction"
            if reduction:
                c *= 2
            cell = BlockCell(genotype[kind], ops, c_pp, c_p, c, reduction, reduction_prev, cell_outputs(genotype, kind))
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.out_channels
            if cfg.auxiliary and index == self.aux_index:
                self.aux_head = AuxiliaryHead(c_p, cfg.num_classes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, cfg.num_classes)

    def forward(self, x: torch.Tensor):
        s0 = s1 = self.stem(x)
        for cell in self.stem_cells:
            s0, s1 = s1, cell(s0, s1)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1)
            if i == self.aux_index and self.aux_head is not None and self.training:
                aux = self.aux_head(s1)
        return self._finish(s1, aux)


class ResidualBlock(nn.Module):
    """NAS-Bench-201's reduction between stages: a basic ResNet block, stride 2."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        # ceil_mode keeps odd sizes in step with the stride-2 conv above.
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                                      nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


class NB201Network(Network):
    """stem, N cells, res-block, N cells, res-block, N cells (NAS-Bench-201: N=5, F=16)."""

    def __init__(self, genotype: dict, cfg: ModelConfig):
        super().__init__()
        edge_ops = parse_cellstr(genotype["cell"])
        c = cfg.channels
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.cells = nn.ModuleList()
        self.reductions = nn.ModuleDict()
        self.aux_index = 2 * cfg.cells_per_stage
        self.aux_head = None
        n = cfg.cells_per_stage
        for stage in range(3):
            if stage > 0:
                self.reductions[str(len(self.cells))] = ResidualBlock(c, 2 * c)
                c *= 2
            for _ in range(n):
                self.cells.append(NB201Cell(edge_ops, OPS_BY_SPACE["nasbench201"], c))
        if cfg.auxiliary:
            self.aux_head = AuxiliaryHead(c, cfg.num_classes)
        self.last = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, cfg.num_classes)

    def forward(self, x: torch.Tensor):
        x = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            if str(i) in self.reductions:
                x = self.reductions[str(i)](x)
            x = cell(x)
            if i == self.aux_index and self.aux_head is not None and self.training:
                aux = self.aux_head(x)
        return self._finish(self.last(x), aux)


def build_model(genotype: dict, cfg: ModelConfig | None = None) -> Network:
    """A network for any genotype; its cell is validated against its space first."""
    cfg = cfg or ModelConfig()
    genotype = space_of(genotype).validate_architecture(genotype)
    if genotype["space"] == "nasbench201":
        if cfg.skeleton != "cifar":
            raise ValueError(f"training.skeleton: {cfg.skeleton!r} is not accepted for nasbench201, whose "
                             "skeleton is fixed; use cifar")
        return NB201Network(genotype, cfg)
    return CellNetwork(genotype, cfg)
