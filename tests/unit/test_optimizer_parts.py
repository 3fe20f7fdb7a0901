"""Optimizer state as JSON plus tensors: the one layout trial, supernet and controller checkpoints share."""

import json

import pytest
import torch

from kubenas.training.checkpoints import CheckpointInvalid, load_optimizer_parts, optimizer_parts


def stepped_adam(sizes=(3, 2)) -> torch.optim.Adam:
    params = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    optimizer = torch.optim.Adam(params, lr=0.01, betas=(0.5, 0.9))
    sum((p ** 2).sum() for p in params).backward()
    optimizer.step()
    return optimizer


def test_a_prefixed_adam_round_trips_through_json_and_tensors():
    source = stepped_adam()
    values, tensors = optimizer_parts(source, "arch")
    values = json.loads(json.dumps(values))  # what reaches disk
    assert all(key.startswith("arch/") for key in tensors)
    tensors["other/0/exp_avg"] = torch.zeros(7)  # another optimizer's entry in the same file is left alone
    target = stepped_adam()
    load_optimizer_parts(target, values, tensors, "arch")
    got, want = target.state_dict(), source.state_dict()
    assert got["param_groups"][0]["betas"] == (0.5, 0.9)
    for index, entry in want["state"].items():
        for key, value in entry.items():
            assert torch.equal(got["state"][index][key], value), key


def test_state_for_another_network_is_refused_with_nothing_loaded():
    values, tensors = optimizer_parts(stepped_adam((3, 2)), "arch")
    target = stepped_adam((3,))
    before = {k: v.clone() for k, v in target.state_dict()["state"][0].items()}
    with pytest.raises(CheckpointInvalid, match="arch: the optimizer state does not fit the network"):
        load_optimizer_parts(target, values, tensors, "arch")
    assert all(torch.equal(target.state_dict()["state"][0][k], v) for k, v in before.items())
