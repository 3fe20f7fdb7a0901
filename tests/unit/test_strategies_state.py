"""Checkpoint -> restore -> the same next proposals as an uninterrupted run; safe state only."""

from __future__ import annotations

import io
import json
import random

import pytest

from kubenas.spaces import build_space
from kubenas.spec import ONE_SHOT_ALGORITHMS
from kubenas.strategies import STRATEGIES, Result, make_strategy
from kubenas.strategies.constraints import Constrained
from kubenas.strategies.dedup import Deduplicated
from kubenas.strategies.multifidelity import ASHA, MedianStopping, MultiFidelity

SPACE = build_space("nasbench201")
HP_SPACE = build_space({
    "type": "nasbench201",
    "hyperparameters": [{"name": "learningRate", "type": "float", "low": 1e-3, "high": 1.0, "log": True}],
})
FAST = {"evolution": {"population": 6, "sample": 2}, "ppo": {"batch": 4}, "reinforce": {"batch": 4},
        "tpe": {"n_startup_trials": 4}, "gp-bo": {"initial": 4}}


def reward(genotype) -> float:
    cell = genotype["cell"]
    return cell.count("conv_3x3") * 10.0 + cell.count("skip") + len(genotype["hparams"]) * 0.5


def drive(strategy, steps, rng, running):
    """Ask and tell with a seeded, out-of-order pattern; returns the proposals made."""
    proposals = []
    for _ in range(steps):
        for t in strategy.ask(rng.randint(1, 2)):
            running.append(t)
            proposals.append((t.id, strategy.space.to_json(t.genotype), t.fidelity))
        while len(running) > 3:
            t = running.pop(rng.randrange(len(running)))
            strategy.tell(t.id, Result(reward=reward(t.genotype), curve=[1.0, 2.0]))
    return proposals


ALLOWED = (dict, list, str, int, float, bool, type(None))


def assert_safe(state, path="state"):
    import torch

    if isinstance(state, torch.Tensor):
        return
    assert isinstance(state, ALLOWED), f"{path} is a {type(state).__name__}"
    if isinstance(state, dict):
        for k, v in state.items():
            assert isinstance(k, str), f"{path} has a non-string key {k!r}"
            assert_safe(v, f"{path}.{k}")
    elif isinstance(state, list):
        for i, v in enumerate(state):
            assert_safe(v, f"{path}[{i}]")


def roundtrip(state):
    """Through the lead's checkpoint format: torch.save / torch.load(weights_only=True)."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def build(name, space, seed):
    return make_strategy(name, space, seed=seed, **FAST.get(name, {}))


def check_restore(factory, warmup=6, after=6):
    rng_a, running_a = random.Random(11), []
    a = factory()
    drive(a, warmup, rng_a, running_a)
    state = a.state_dict()
    assert_safe(state)
    saved = roundtrip(state)
    rng_b, running_b = random.Random(), []
    rng_b.setstate(rng_a.getstate())
    running_b = [type(t)(**t.to_dict()) for t in running_a]
    expected = drive(a, after, rng_a, running_a)

    b = factory()
    b.load_state_dict(saved)
    got = drive(b, after, rng_b, running_b)
    assert got == expected
    assert expected, "the run made no proposals"


# One-shot algorithms propose only what their supernet derived: tests/unit/test_one_shot_strategy.py.
PROPOSING = sorted(n for n in STRATEGIES if n not in ONE_SHOT_ALGORITHMS)


@pytest.mark.parametrize("name", PROPOSING)
def test_restored_strategy_proposes_what_the_uninterrupted_one_would(name):
    check_restore(lambda: build(name, SPACE, seed=4))


@pytest.mark.parametrize("name", ["evolution", "tpe", "ppo", "gp-bo"])
def test_restore_with_numeric_hyperparameters(name):
    check_restore(lambda: build(name, HP_SPACE, seed=2))


@pytest.mark.parametrize("wrap", ["dedup", "constrained", "asha", "median"])
def test_restored_wrappers_propose_the_same(wrap):
    def factory():
        inner = build("evolution", SPACE, seed=9)
        if wrap == "dedup":
            return Deduplicated(inner)
        if wrap == "constrained":
            return Constrained(inner, lambda g: {"params": g["cell"].count("conv") * 1.0}, limits={"params": 4})
        if wrap == "asha":
            return MultiFidelity(inner, ASHA(max_epochs=9, min_epochs=1, eta=3, brackets=2))
        return MultiFidelity(inner, MedianStopping(max_epochs=9))
    check_restore(factory)


def test_state_without_tensors_is_plain_json():
    for name in ("random", "evolution", "local-search", "tpe", "gp-bo"):
        s = build(name, SPACE, seed=1)
        drive(s, 5, random.Random(0), [])
        state = s.state_dict()
        assert json.loads(json.dumps(state, allow_nan=False)) == state


def test_checkpoint_names_its_strategy():
    state = build("evolution", SPACE, seed=0).state_dict()
    with pytest.raises(ValueError, match="evolution"):
        build("local-search", SPACE, seed=0).load_state_dict(state)


def test_same_seed_same_search_other_seed_other_search():
    for name in PROPOSING:
        runs = [drive(build(name, SPACE, seed=s), 4, random.Random(0), []) for s in (1, 1, 2)]
        assert runs[0] == runs[1], name
        assert runs[0] != runs[2], name
