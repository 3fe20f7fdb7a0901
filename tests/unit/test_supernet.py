"""Supernets: a sampled path on the shared weights computes what the stand-alone network of
the same genotype computes with those weights copied in; the mixture mode runs every
candidate and its output depends on the architecture weights."""

from __future__ import annotations

import random

import pytest
import torch

from kubenas.errors import InvalidGenotype
from kubenas.nn.networks import ModelConfig, build_model
from kubenas.nn.supernet import build_supernet
from kubenas.spaces import build_space

CFG = ModelConfig(channels=4, cells_per_stage=1, in_channels=1, num_classes=10)
SPACES = [
    "nasbench201",
    "darts",
    "nasnet",
    # concat blocks (2C wide, read through adapters) and fewer blocks; every output slot layout
    {"type": "nasnet", "blocks": 3, "combines": ["add", "concat"]},
    {"type": "darts", "blocks": 2, "operations": ["sep_conv_3x3", "skip_connect", "max_pool_3x3"]},
]


def _randomised(space_spec):
    """A supernet whose batch-norm statistics and affine weights are not the defaults, so
    that a wrong mapping of any of them shows in the output."""
    torch.manual_seed(0)
    space = build_space(space_spec)
    net = build_supernet(space, CFG)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return space, net.eval()


@pytest.mark.parametrize("space_spec", SPACES, ids=str)
def test_a_sampled_path_equals_the_stand_alone_network_with_the_weights_copied(space_spec):
    space, net = _randomised(space_spec)
    x = torch.randn(4, 1, 8, 8)
    rng = random.Random(1)
    outputs = set()
    for _ in range(4):
        genotype = space.sample(rng)
        standalone = build_model(genotype, CFG)
        standalone.load_state_dict(net.subnet_state_dict(genotype), strict=True)  # every weight, no extra
        standalone.eval()
        with torch.no_grad():
            expected = standalone(x)
            got = net(x, genotype=genotype)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        outputs.add(round(float(got.sum()), 4))
    assert len(outputs) > 1  # the paths differ, so the test compares different networks


@pytest.mark.parametrize("space_spec", SPACES[:3], ids=str)
def test_the_mixture_runs_every_candidate_weighted_by_the_softmax(space_spec):
    space, net = _randomised(space_spec)
    x = torch.randn(2, 1, 8, 8)
    alphas = {name: torch.zeros(shape, requires_grad=True) for name, shape in net.arch_shapes().items()}
    out = net(x, weights={k: torch.softmax(a, -1) for k, a in alphas.items()})
    assert out.shape == (2, 10)
    out.sum().backward()
    # Every architecture parameter influences the output.
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alphas.values())
    other = net(x, weights={k: torch.softmax(torch.randn(a.shape), -1) for k, a in alphas.items()})
    assert not torch.allclose(out, other)


def test_a_genotype_of_another_space_or_with_a_concat_list_is_refused():
    space, net = _randomised("nasnet")
    with pytest.raises(InvalidGenotype, match="genotype.space"):
        net.subnet_state_dict({"space": "darts", "normal": [], "reduction": []})
    genotype = space.sample(random.Random(0))
    genotype["concat"] = {"normal": [0] + [2 + b for b in range(space.blocks)]}
    with pytest.raises(InvalidGenotype, match="genotype.concat"):
        net.subnet_state_dict(genotype)
