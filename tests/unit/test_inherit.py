"""Weight inheritance: unchanged parts copy, changed parts stay fresh, shapes are checked;
evolution and local search name the parent a child inherits from."""

import copy
import random

import pytest
import torch

from kubenas.nn import ModelConfig, build_model
from kubenas.nn.inherit import inherit_weights
from kubenas.spaces import build_space
from kubenas.spaces.nasbench201 import format_cellstr
from kubenas.strategies import Result, make_strategy
from kubenas.strategies.base import Trial
from kubenas.strategies.dedup import Deduplicated
from kubenas.strategies.encoding import Encoding

torch.set_num_threads(1)
CFG = ModelConfig(channels=4, cells_per_stage=1, in_channels=1, num_classes=10)


def _trained_looking(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's state with every tensor changed, so copies are told apart from
    fresh initialisations (running statistics included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.add_(torch.rand(tensor.shape, generator=gen) + 0.1)
            elif tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=gen) + 0.01)
            else:
                tensor.add_(7)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _copied_names(child: torch.nn.Module, parent: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in child.state_dict().items() if k in parent and v.shape == parent[k].shape
            and torch.equal(v, parent[k])}


def _sample(space_name: str, seed: int) -> dict:
    return build_space(space_name).sample(random.Random(seed))


@pytest.mark.parametrize("space_name", ["nasbench201", "nasnet", "darts"])
def test_an_identical_child_copies_everything_and_computes_the_same(space_name):
    genotype = _sample(space_name, 1)
    torch.manual_seed(0)
    parent = build_model(genotype, CFG)
    tensors = _trained_looking(parent, 0)
    torch.manual_seed(1)
    child = build_model(copy.deepcopy(genotype), CFG)
    counts = inherit_weights(child, genotype, tensors, genotype)
    state = child.state_dict()
    assert counts == {"copied": len(state), "fresh": 0,
                      "copied_parameters": sum(p.numel() for p in child.parameters())}
    parent.eval(), child.eval()
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(parent(x), child(x))


def test_nasbench201_one_edge_mutation_copies_all_but_that_edge():
    ops = ["nor_conv_3x3", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3", "nor_conv_3x3"]
    parent_genotype = {"space": "nasbench201", "cell": format_cellstr(ops), "hparams": {}}
    child_ops = list(ops)
    child_ops[3] = "nor_conv_1x1"  # edge 3 (node 3 <- node 0): 3x3 -> 1x1 conv
    child_genotype = {"space": "nasbench201", "cell": format_cellstr(child_ops), "hparams": {}}
    parent = build_model(parent_genotype, CFG)
    tensors = _trained_looking(parent, 0)
    child = build_model(child_genotype, CFG)
    counts = inherit_weights(child, child_genotype, tensors, parent_genotype)

    names = set(child.state_dict())
    changed = {n for n in names if n.split(".")[0] == "cells" and n.split(".")[2:4] == ["edges", "3"]}
    assert changed, "the mutated edge has weights in every cell"
    assert _copied_names(child, tensors) == names - changed
    assert counts["copied"] == len(names - changed) and counts["fresh"] == len(changed)
    # An edge whose operation keeps its shape but changes still does not copy.
    child_ops[2] = "nor_conv_3x3"  # edge 2: 1x1 -> 3x3, both ReLUConvBN (different kernel shapes)
    child_ops[5] = "nor_conv_1x1"  # edge 5: 3x3 -> 1x1
    child_genotype = {"space": "nasbench201", "cell": format_cellstr(child_ops), "hparams": {}}
    child = build_model(child_genotype, CFG)
    inherit_weights(child, child_genotype, tensors, parent_genotype)
    assert not any(".edges.2." in n or ".edges.5." in n for n in _copied_names(child, tensors))


def _nasnet_genotype(op_a: str = "sep_conv_3x3", combine: str = "add") -> dict:
    block = {"inputs": [0, 1], "ops": ["conv_3x3", "sep_conv_3x3"], "combine": "add"}
    normal = [dict(block, ops=[op_a, "conv_1x1"]), dict(block, inputs=[2, 1]),
              dict(block, inputs=[1, 0], combine=combine)]
    reduction = [dict(block), dict(block, inputs=[2, 0], ops=["identity", "max_pool_3x3"]), dict(block)]
    return build_space({"type": "nasnet", "blocks": 3}).validate({"space": "nasnet", "normal": normal, "reduction": reduction,
                                                     "hparams": {}})


def test_nasnet_one_operation_mutation_copies_all_but_that_operand():
    cfg = ModelConfig(channels=4, cells_per_stage=1, in_channels=1, num_classes=10, auxiliary=True)
    parent_genotype, child_genotype = _nasnet_genotype("sep_conv_3x3"), _nasnet_genotype("conv_3x3")
    parent = build_model(parent_genotype, cfg)
    tensors = _trained_looking(parent, 0)
    child = build_model(child_genotype, cfg)
    counts = inherit_weights(child, child_genotype, tensors, parent_genotype)

    names = set(child.state_dict())
    normal_cells = [i for i, cell in enumerate(child.cells) if not cell.reduction]
    changed = {n for n in names for i in normal_cells if n.startswith(f"cells.{i}.ops.0.")}
    assert changed
    assert _copied_names(child, tensors) == names - changed
    assert counts == {"copied": len(names - changed), "fresh": len(changed),
                      "copied_parameters": sum(p.numel() for n, p in child.named_parameters() if n not in changed)}


def test_nasnet_a_changed_input_does_not_copy_the_operand():
    parent_genotype = _nasnet_genotype()
    child_genotype = copy.deepcopy(parent_genotype)
    child_genotype["normal"][2]["inputs"] = [0, 0]  # block 2 side 0 reads input 0 instead of 1
    parent = build_model(parent_genotype, CFG)
    tensors = _trained_looking(parent, 0)
    child = build_model(child_genotype, CFG)
    inherit_weights(child, child_genotype, tensors, parent_genotype)
    copied = _copied_names(child, tensors)
    normal_cells = [i for i, cell in enumerate(child.cells) if not cell.reduction]
    assert not any(n.startswith(f"cells.{i}.ops.4.") for n in copied for i in normal_cells)
    assert any(n.startswith(f"cells.{normal_cells[0]}.ops.5.") for n in copied)  # its other side is kept


def test_a_shape_mismatch_never_copies():
    # add -> concat doubles the channels of block 2, an output of the normal cells: the
    # next cells' preprocessing and the classifier change shape; wider networks change everything.
    parent_genotype, child_genotype = _nasnet_genotype(combine="add"), _nasnet_genotype(combine="concat")
    parent = build_model(parent_genotype, CFG)
    tensors = _trained_looking(parent, 0)
    child = build_model(child_genotype, CFG)
    fresh_state = {k: v.clone() for k, v in child.state_dict().items()}
    counts = inherit_weights(child, child_genotype, tensors, parent_genotype)
    assert counts["fresh"] > 0
    for name, tensor in child.state_dict().items():
        if name in tensors and tensors[name].shape != tensor.shape:
            assert torch.equal(tensor, fresh_state[name]), name
    assert any(tensors[n].shape != t.shape for n, t in child.state_dict().items() if n in tensors)

    wide = ModelConfig(channels=6, cells_per_stage=1, in_channels=1, num_classes=10)
    genotype = _sample("nasbench201", 3)
    child = build_model(genotype, wide)
    tensors = _trained_looking(build_model(genotype, CFG), 0)
    fresh_state = {k: v.clone() for k, v in child.state_dict().items()}
    counts = inherit_weights(child, genotype, tensors, genotype)
    fitting = {n for n, t in child.state_dict().items() if tensors[n].shape == t.shape}
    # Only the classifier's bias (10 classes either way) and batch norm's step counters fit.
    assert fitting == {"classifier.bias"} | {n for n in child.state_dict() if n.endswith("num_batches_tracked")}
    assert counts == {"copied": len(fitting), "fresh": len(child.state_dict()) - len(fitting),
                      "copied_parameters": 10}
    for name, tensor in child.state_dict().items():
        assert torch.equal(tensor, tensors[name] if name in fitting else fresh_state[name]), name


def test_a_parent_from_another_space_is_refused():
    nb201, nasnet = _sample("nasbench201", 0), _sample("nasnet", 0)
    child = build_model(nb201, CFG)
    with pytest.raises(ValueError, match="parent is a 'nasnet' genotype"):
        inherit_weights(child, nb201, {}, nasnet)


# --- strategies that name a parent --------------------------------------------------------
NB201 = build_space("nasbench201")


def test_evolution_children_name_the_member_they_mutate():
    evo = make_strategy("evolution", NB201, seed=0, population=4, sample=2, inherit_weights=True)
    first = evo.ask(4)
    assert all(t.parent_id is None and t.warm_start is None for t in first), "random phase: no parent"
    for k, t in enumerate(first):
        evo.tell(t.id, Result(reward=float(k)))
    enc = Encoding(NB201)
    by_id = {t.id: t for t in first}
    for child in evo.ask(6):
        assert child.warm_start == "inherit" and child.parent_id in by_id
        parent = enc.indices(by_id[child.parent_id].genotype)
        assert sum(a != b for a, b in zip(enc.indices(child.genotype), parent)) == 1
    plain = make_strategy("evolution", NB201, seed=0, population=4, sample=2)
    for k, t in enumerate(plain.ask(4)):
        plain.tell(t.id, Result(reward=float(k)))
    assert all(t.parent_id is None and t.warm_start is None for t in plain.ask(3)), "inheritance is opt-in"


def test_local_search_neighbours_name_the_centre():
    ls = make_strategy("local-search", NB201, seed=0, inherit_weights=True)
    (start,) = ls.ask(1)
    assert start.parent_id is None
    ls.tell(start.id, Result(reward=1.0))
    enc = Encoding(NB201)
    for nb in ls.ask(5):
        assert (nb.parent_id, nb.warm_start) == (start.id, "inherit")
        assert sum(a != b for a, b in zip(enc.indices(nb.genotype), enc.indices(start.genotype))) == 1


def test_states_saved_before_inheritance_still_load():
    old_trial = {"id": "t000001", "genotype": NB201.sample(random.Random(0)), "fidelity": None}
    assert Trial.from_dict(old_trial).parent_id is None and Trial.from_dict(old_trial).warm_start is None
    evo = make_strategy("evolution", NB201, seed=0, population=2, sample=1, inherit_weights=True)
    for t in evo.ask(2):
        evo.tell(t.id, Result(reward=1.0))
    state = evo.state_dict()
    del state["member_ids"]
    restored = make_strategy("evolution", NB201, seed=0, population=2, sample=1, inherit_weights=True)
    restored.load_state_dict(state)
    child = restored.ask(1)[0]
    assert child.parent_id is None and child.warm_start is None, "no id known: the child starts fresh"
    ls = make_strategy("local-search", NB201, seed=0)
    state = ls.state_dict()
    del state["centre_id"]
    make_strategy("local-search", NB201, seed=0).load_state_dict(state)


def test_strategies_say_which_checkpoints_later_children_may_need():
    evo = make_strategy("evolution", NB201, seed=0, population=2, sample=1, inherit_weights=True)
    trials = evo.ask(3)
    for t in trials:
        evo.tell(t.id, Result(reward=1.0))
    assert evo.checkpoints_needed() == {trials[1].id, trials[2].id}, "the aged-out member is not needed"
    assert Deduplicated(evo).checkpoints_needed() == evo.checkpoints_needed()
    plain = make_strategy("evolution", NB201, seed=0, population=2, sample=1)
    for t in plain.ask(2):
        plain.tell(t.id, Result(reward=1.0))
    assert plain.checkpoints_needed() == set()
    ls = make_strategy("local-search", NB201, seed=0, inherit_weights=True)
    (start,) = ls.ask(1)
    ls.tell(start.id, Result(reward=1.0))
    assert ls.checkpoints_needed() == {start.id}
