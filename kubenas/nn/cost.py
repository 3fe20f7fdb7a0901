"""Model cost without training: parameters and multiply-adds of one forward pass."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module, include_auxiliary: bool = False) -> int:
    return sum(p.numel() for name, p in model.named_parameters()
               if include_auxiliary or not name.startswith("aux_head."))


def multiply_adds(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-adds of convolutions and linear layers for one image at inference
    (the cost NASNet and MnasNet report); pooling, BN and adds are ignored."""
    total = 0

    def conv_hook(module: nn.Conv2d, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, inputs, output):
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
