"""The controller's side of enas/darts/spos: nothing until the supernet's derived genotypes
arrive, then each once as an ordinary trial, then exhausted; and the supernet watch."""

from __future__ import annotations

import json
import random

import pytest

from kubenas.spaces import build_space
from kubenas.spec import ArchitectureSearchSpec
from kubenas.strategies import Result, SearchExhausted, make_strategy
from kubenas.strategies.one_shot import one_shot_of
from kubenas_controller.strategy import build_strategy
from kubenas_controller.supernet_watch import SupernetWatch


def derived(space, n: int, algorithm: str = "enas", seed: int = 0) -> dict:
    rng = random.Random(seed)
    genotypes = [space.sample(rng) for _ in range(n)]
    return {"algorithm": algorithm,
            "genotypes": [{"genotype": g, "hash": space.hash(g), "score": 0.9 - i / 10} for i, g in enumerate(genotypes)]}


def test_nothing_is_proposed_until_the_genotypes_arrive_then_each_once_then_exhausted():
    space = build_space("nasbench201")
    spec = ArchitectureSearchSpec.model_validate({"strategy": {"algorithm": "enas"}})
    strategy = build_strategy(spec, space)  # the controller's stack of wrappers (dedup) around it
    one_shot = one_shot_of(strategy)
    assert one_shot is not None and one_shot.waiting_for_supernet
    assert strategy.ask(4) == []  # the supernet still trains: not exhausted either

    payload = derived(space, 3)
    payload["genotypes"].append(dict(payload["genotypes"][0]))  # a repeat: trained once
    assert one_shot.take_derived(payload) == 3
    trials = strategy.ask(5)
    assert [space.hash(t.genotype) for t in trials] == [g["hash"] for g in payload["genotypes"][:3]]
    assert strategy.ask(2) == []  # the last ones still train
    for trial in trials:
        strategy.tell(trial.id, Result(reward=0.5, epochs=1))
    with pytest.raises(SearchExhausted, match="every genotype the supernet derived"):
        strategy.ask(1)


def test_its_state_keeps_the_genotypes_so_a_restarted_controller_needs_no_file():
    space = build_space("nasbench201")
    strategy = make_strategy("darts", space, seed=1)
    strategy.take_derived(derived(space, 2, "darts"))
    first = strategy.ask(1)
    restored = make_strategy("darts", space, seed=1)
    restored.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    assert not restored.waiting_for_supernet
    assert [t.genotype for t in restored.ask(3)] == [t.genotype for t in strategy.ask(3)]
    assert first[0].id in restored.pending


@pytest.mark.parametrize("payload, message", [
    ({"algorithm": "darts", "genotypes": []}, "derived by 'darts', but this search runs 'enas'"),
    ({"algorithm": "enas"}, "expected an object with a list 'genotypes'"),
    ({"algorithm": "enas", "genotypes": []}, "no genotypes"),
    ({"algorithm": "enas", "genotypes": [{"genotype": {"space": "darts"}}]}, "genotypes[0]: genotype.space"),
])
def test_unusable_derived_genotypes_are_refused_naming_what_is_wrong(payload, message):
    strategy = make_strategy("enas", build_space("nasbench201"))
    with pytest.raises(ValueError) as refused:
        strategy.take_derived(payload)
    assert message in str(refused.value)
    assert strategy.waiting_for_supernet


def test_the_watch_reports_supernet_then_deriving_then_the_genotypes(tmp_path):
    watch = SupernetWatch(tmp_path, poll_seconds=0)
    assert watch.poll() is None and watch.stage == "supernet"  # nothing written yet
    supernet = tmp_path / "supernet"
    supernet.mkdir()
    (supernet / "epoch-1.json").write_text(json.dumps({"epoch": 1, "progress": {"epochs": 2}}))
    assert watch.poll() is None and (watch.epoch, watch.epochs, watch.stage) == (1, 2, "supernet")
    (supernet / "epoch-2.json").write_text(json.dumps({"epoch": 2, "progress": {"epochs": 2}}))
    assert watch.poll() is None and watch.stage == "deriving"  # the last epoch is in: deriving
    (supernet / "derived.json").write_text('{"algorithm": "enas", "genot')  # not complete yet
    assert watch.poll() is None
    (supernet / "derived.json").write_text('{"algorithm": "enas", "genotypes": []}')
    assert watch.poll() == {"algorithm": "enas", "genotypes": []}


def test_a_derived_json_of_another_spec_is_refused_by_kubenas_run_and_not_taken_by_the_controller(tmp_path):
    from kubenas.errors import KubenasError
    from kubenas.local.runner import LocalRunner, RunOptions
    from kubenas.manifest import parse_manifest
    from kubenas.oneshot import supernet_fingerprint

    def search(learning_rate: float):
        return parse_manifest({"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
                               "metadata": {"name": "x"}, "spec": {"strategy": {"algorithm": "spos"},
                                                                   "training": {"learningRate": learning_rate}}})

    made, changed = search(0.05), search(0.1)
    supernet = tmp_path / "artifacts" / "supernet"
    supernet.mkdir(parents=True)
    payload = {**derived(build_space("nasbench201"), 2, "spos"), "fingerprint": supernet_fingerprint(made.spec)}
    (supernet / "derived.json").write_text(json.dumps(payload))
    runner = LocalRunner(RunOptions(manifest=tmp_path / "s.yaml", output=tmp_path))
    runner._check_output(made)  # its own supernet: resumed without training it again
    with pytest.raises(KubenasError, match="holds a supernet made for another spec"):
        runner._check_output(changed)
    assert SupernetWatch(tmp_path / "artifacts", poll_seconds=0, spec=made.spec).poll() == payload
    assert SupernetWatch(tmp_path / "artifacts", poll_seconds=0, spec=changed.spec).poll() is None
