"""Operations by name, one table per search space, each spelled as its paper does.

Every constructor takes (channels, stride): cells project every hidden state to
the cell's channel count before an operation sees it, so an operation never
changes the channel count, only (with stride 2) the resolution.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

OpFactory = Callable[[int, int], nn.Module]


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int = 1):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: two offset 1x1 stride-2 convs."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # Shift by one pixel and pad back, so odd sizes give the same shape as conv_a.
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


class DilatedSepConv(nn.Sequential):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN."""

    def __init__(self, c: int, kernel: int, stride: int, dilation: int = 1):
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel, stride, padding, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )


class SepConv(nn.Sequential):
    """The NASNet/DARTS separable conv: the depthwise-separable unit applied twice."""

    def __init__(self, c: int, kernel: int, stride: int):
        super().__init__(DilatedSepConv(c, kernel, stride), DilatedSepConv(c, kernel, 1))


class FactorizedConv(nn.Sequential):
    """A 1xk conv then a kx1 conv (NASNet's '1x7 then 7x1')."""

    def __init__(self, c: int, kernel: int, stride: int):
        pad = kernel // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, (1, kernel), (1, stride), (0, pad), bias=False),
            nn.Conv2d(c, c, (kernel, 1), (stride, 1), (pad, 0), bias=False),
            nn.BatchNorm2d(c),
        )


class Zero(nn.Module):
    """DARTS' `none`: contributes nothing, at the right shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def identity(c: int, stride: int) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c)


def max_pool(kernel: int) -> OpFactory:
    return lambda c, stride: nn.MaxPool2d(kernel, stride, kernel // 2)


def avg_pool(kernel: int) -> OpFactory:
    return lambda c, stride: nn.AvgPool2d(kernel, stride, kernel // 2, count_include_pad=False)


NASNET_OPS: dict[str, OpFactory] = {
    "identity": identity,
    "conv_1x3_3x1": lambda c, s: FactorizedConv(c, 3, s),
    "conv_1x7_7x1": lambda c, s: FactorizedConv(c, 7, s),
    "dil_conv_3x3": lambda c, s: ReLUConvBN(c, c, 3, s, padding=2, dilation=2),
    "avg_pool_3x3": avg_pool(3),
    "max_pool_3x3": max_pool(3),
    "max_pool_5x5": max_pool(5),
    "max_pool_7x7": max_pool(7),
    "conv_1x1": lambda c, s: ReLUConvBN(c, c, 1, s, 0),
    "conv_3x3": lambda c, s: ReLUConvBN(c, c, 3, s, 1),
    "sep_conv_3x3": lambda c, s: SepConv(c, 3, s),
    "sep_conv_5x5": lambda c, s: SepConv(c, 5, s),
    "sep_conv_7x7": lambda c, s: SepConv(c, 7, s),
}

DARTS_OPS: dict[str, OpFactory] = {
    "none": lambda c, s: Zero(s),
    "max_pool_3x3": max_pool(3),
    "avg_pool_3x3": avg_pool(3),
    "skip_connect": identity,
    "sep_conv_3x3": lambda c, s: SepConv(c, 3, s),
    "sep_conv_5x5": lambda c, s: SepConv(c, 5, s),
    "dil_conv_3x3": lambda c, s: DilatedSepConv(c, 3, s, dilation=2),
    "dil_conv_5x5": lambda c, s: DilatedSepConv(c, 5, s, dilation=2),
}

NB201_OPS: dict[str, OpFactory] = {
    "none": lambda c, s: Zero(s),
    "skip_connect": identity,
    "nor_conv_1x1": lambda c, s: ReLUConvBN(c, c, 1, s, 0),
    "nor_conv_3x3": lambda c, s: ReLUConvBN(c, c, 3, s, 1),
    "avg_pool_3x3": avg_pool(3),
}

# Operations that pass a state through (or zero it): drop path leaves them alone.
IDENTITY_OPS = frozenset({"identity", "skip_connect", "none"})

OPS_BY_SPACE: dict[str, dict[str, OpFactory]] = {"nasnet": NASNET_OPS, "darts": DARTS_OPS, "nasbench201": NB201_OPS}


def scheduled_drop_path(final: float, step: int, total_steps: int) -> float:
    """ScheduledDropPath's time scaling (Zoph et al. 2018, as their reference does it):
    the probability rises linearly with the optimizer step, from 0 at the first
    step to `final` at the end of training. `Network.set_drop_path` then scales
    it by the cell's depth."""
    return final * min(1.0, step / max(1, total_steps))


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a path with probability drop_prob (ScheduledDropPath)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask
