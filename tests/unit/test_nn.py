import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from kubenas.errors import InvalidGenotype
from kubenas.nn import ModelConfig, build_model, count_parameters, multiply_adds
from kubenas.nn.ops import OPS_BY_SPACE
from kubenas.spaces import SPACES, build_space
from tests.unit.test_spaces import assignments

torch.set_num_threads(1)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "genotypes"

ALL_OPS = [(space, name) for space, table in OPS_BY_SPACE.items() for name in table]


@pytest.mark.parametrize("space, name", ALL_OPS)
@pytest.mark.parametrize("size", [8, 7])
def test_every_operation_keeps_channels_and_halves_resolution_at_stride_2(space, name, size):
    x = torch.randn(2, 6, size, size, requires_grad=True)
    same = OPS_BY_SPACE[space][name](6, 1)(x)
    assert same.shape == (2, 6, size, size)
    half = OPS_BY_SPACE[space][name](6, 2)(x)
    assert half.shape == (2, 6, (size + 1) // 2, (size + 1) // 2)
    (same.sum() + half.sum()).backward()


def _check_forward_backward(space_name: str, assignment: dict, cfg: ModelConfig, size: int) -> None:
    space = build_space(space_name)
    genotype = space.decode(assignment)
    model = build_model(genotype, cfg)
    model.train()
    x = torch.randn(2, cfg.in_channels, size, size)
    out = model(x)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    assert logits.shape == (2, cfg.num_classes)
    loss = logits.logsumexp(1).sum() + (aux.sum() if aux is not None else 0)
    loss.backward()
    assert all(p.grad is not None for p in model.stem.parameters())
    model.eval()
    assert model(x).shape == (2, cfg.num_classes)


SMALL = ModelConfig(channels=4, cells_per_stage=1, num_classes=7, in_channels=3, stem_multiplier=1, drop_path=0.2)


@settings(max_examples=200)
@given(data=st.data())
def test_random_nasnet_networks_build_and_train_a_step(data):
    _check_forward_backward("nasnet", data.draw(assignments(build_space("nasnet"))), SMALL, 8)


@settings(max_examples=200)
@given(data=st.data())
def test_random_darts_networks_build_and_train_a_step(data):
    _check_forward_backward("darts", data.draw(assignments(build_space("darts"))), SMALL, 8)


@settings(max_examples=200)
@given(data=st.data())
def test_random_nasbench201_networks_build_and_train_a_step(data):
    _check_forward_backward("nasbench201", data.draw(assignments(build_space("nasbench201"))), SMALL, 8)


@pytest.mark.parametrize("space", sorted(SPACES))
def test_auxiliary_head_and_grayscale_input(space):
    genotype = build_space(space).sample(__import__("random").Random(0))
    cfg = ModelConfig(channels=4, cells_per_stage=2, in_channels=1, auxiliary=True)
    model = build_model(genotype, cfg)
    logits, aux = model(torch.randn(3, 1, 8, 8))
    assert logits.shape == aux.shape == (3, 10)
    assert count_parameters(model, include_auxiliary=True) > count_parameters(model)


def test_nasbench201_skeleton_matches_the_benchmarks_published_cost():
    # NAS-Bench-201's largest cell (every edge nor_conv_3x3) on CIFAR-10: 1.5316 M parameters, 220.11 M FLOPs.
    cell = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    model = build_model({"space": "nasbench201", "cell": cell}, ModelConfig(channels=16, cells_per_stage=5))
    assert count_parameters(model) == 1_531_546
    assert abs(multiply_adds(model, (3, 32, 32)) / 1e6 - 220.11) < 0.05


def test_nasnet_a_is_the_papers_6_at_768_with_its_3_3_million_parameters():
    genotype = json.loads((EXAMPLES / "nasnet-a.json").read_text())
    model = build_model(genotype, ModelConfig(channels=32, cells_per_stage=6, auxiliary=True))
    # Zoph et al. 2018, table 1: NASNet-A (6 @ 768), 3.3M parameters. Counted without the
    # auxiliary head (the reference's head alone, 768 filters over 4x4, has about 1.6M).
    assert model.classifier.in_features == 768
    assert abs(count_parameters(model) - 3.3e6) <= 0.02 * 3.3e6
    assert count_parameters(model) == 3_328_234
    # Without the concat lists the same blocks give the smaller 6 @ 640 network.
    plain = {k: v for k, v in genotype.items() if k != "concat"}
    assert build_model(plain, ModelConfig(channels=32, cells_per_stage=6)).classifier.in_features == 640


def test_a_reduction_cell_that_concatenates_a_cell_input_halves_it():
    blocks = [{"inputs": [0, 1], "ops": ["conv_3x3", "identity"], "combine": "add"},
              {"inputs": [2, 1], "ops": ["max_pool_3x3", "identity"], "combine": "concat"}]
    genotype = {"space": "nasnet", "normal": blocks, "reduction": blocks,
                "concat": {"normal": [0, 1, 3], "reduction": [1, 2, 3]}}
    model = build_model(genotype, SMALL)
    c = SMALL.channels
    assert model.cells[0].out_channels == c + c + 2 * c
    assert model.cells[1].reduction and model.cells[1].out_channels == c * 2 * (1 + 1 + 2)
    x = torch.randn(2, 3, 8, 8)
    s = model.stem(x)
    assert model.cells[1](s, model.cells[0](s, s)).shape == (2, 8 * c, 4, 4)
    _train_one_step(model, x)


def test_scheduled_drop_path_rises_per_step_and_with_depth():
    from kubenas.nn.ops import scheduled_drop_path

    assert [scheduled_drop_path(0.4, step, 8) for step in (0, 1, 4, 8, 20)] == [0.0, 0.05, 0.2, 0.4, 0.4]
    genotype = json.loads((EXAMPLES / "nasnet-a.json").read_text())
    model = build_model(genotype, ModelConfig(channels=4, cells_per_stage=2))
    model.set_drop_path(0.3)
    # The reference counts reduction cells too: cell i of 3N+2 drops with p * (i + 1) / (3N + 2).
    assert len(model.cells) == 8
    assert [round(cell.drop_prob, 6) for cell in model.cells] == [round(0.3 * (i + 1) / 8, 6) for i in range(8)]
    # Identity operations are never dropped, as in the reference; the others are.
    cell = model.cells[0]
    names = [name for block in cell.blocks for name in block["ops"]]
    assert cell.droppable == [name != "identity" for name in names]


def _train_one_step(model, x):
    model.train()
    before = [p.detach().clone() for p in model.stem.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.stem.parameters()))


@pytest.mark.parametrize("space, blocks", [("nasnet", 2), ("darts", 3)])
def test_genotypes_of_a_space_with_other_blocks_build_and_train_a_step(space, blocks):
    genotype = build_space({"type": space, "blocks": blocks}).sample(__import__("random").Random(blocks))
    genotype = json.loads(json.dumps(genotype))  # as it travels
    model = build_model(genotype, SMALL)
    assert len(model.cells[0].blocks) == blocks
    _train_one_step(model, torch.randn(2, 3, 8, 8))


def test_concat_blocks_feed_later_blocks():
    blocks = [{"inputs": [0, 1], "ops": ["conv_3x3", "identity"], "combine": "concat"},
              {"inputs": [2, 2], "ops": ["max_pool_3x3", "identity"], "combine": "concat"}]
    genotype = {"space": "nasnet", "normal": blocks, "reduction": blocks}
    space = build_space({"type": "nasnet", "blocks": 2})
    space.validate(genotype)
    from kubenas.nn.networks import CellNetwork
    model = CellNetwork(genotype, SMALL)
    # Block 1 (the only unused one) concatenates two C-channel operands; the 2C
    # output of block 0 is projected back to C before block 1's operations.
    assert model.cells[0].out_channels == 2 * SMALL.channels
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 7)


def test_build_model_rejects_invalid_genotypes():
    with pytest.raises(InvalidGenotype, match="genotype.cell"):
        build_model({"space": "nasbench201", "cell": "|bogus~0|"})


@pytest.mark.parametrize("space", sorted(SPACES))
@pytest.mark.parametrize("size", [9, 15, 17])
def test_odd_input_sizes_work_in_every_skeleton(space, size):
    genotype = build_space(space).sample(__import__("random").Random(size))
    model = build_model(genotype, ModelConfig(channels=4, cells_per_stage=1))
    assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
