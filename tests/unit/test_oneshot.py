"""One-shot algorithms and their worker: DARTS' steps, derivation, and real training runs of
`python -m kubenas.oneshot` at world size 1 (in this process) and 2 (two processes, gloo)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from kubenas.local.processes import die_with_parent
from kubenas.nn.networks import ModelConfig
from kubenas.nn.supernet import build_supernet
from kubenas.oneshot import supernet_fingerprint
from kubenas.oneshot.base import top_distinct
from kubenas.oneshot.common import OneShotSettings, Shards
from kubenas.oneshot.darts import Darts
from kubenas.oneshot.derive import derive_from_alphas
from kubenas.oneshot.spos import Spos
from kubenas.oneshot.worker import main
from kubenas.spaces import build_space
from kubenas.spec import ArchitectureSearchSpec
from kubenas.training.datasets import load_dataset
from tests.support.net import free_port
from tests.support.waiting import wait_for

CFG = ModelConfig(channels=4, cells_per_stage=1, in_channels=1, num_classes=10)
FAST = {"enas": {"policySteps": 3, "policySamples": 4}, "darts": {}, "spos": {"evolutionPopulation": 4,
                                                                              "evolutionCycles": 1}}


def spec_file(tmp_path: Path, algorithm: str, space="nasbench201", epochs=1, subset=160, **parameters) -> Path:
    spec = ArchitectureSearchSpec.model_validate({
        "searchSpace": {"type": space} if isinstance(space, str) else space,
        "strategy": {"algorithm": algorithm, "parameters": {"topK": 2, "calibrationBatches": 1, **parameters}},
        "training": {"epochs": epochs, "batchSize": 32, "channels": 4, "cellsPerStage": 1,
                     "dataset": {"name": "digits", "trainSubset": subset, "validationFraction": 0.1}}})
    path = tmp_path / f"{algorithm}.json"
    path.write_text(spec.model_dump_json(by_alias=True))
    return path


@pytest.fixture(scope="module")
def shards() -> Shards:
    data = load_dataset("digits", validation_fraction=0.1, train_subset=128, seed=0)
    return Shards(data.train_x, data.train_y, data.val_x, data.val_y)


@pytest.fixture
def single_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("order", [1, 2])
def test_one_darts_architecture_step_changes_the_alphas_and_not_the_weights(order, shards, single_process_group):
    torch.manual_seed(0)
    space = build_space("nasbench201")
    darts = Darts(build_supernet(space, CFG), space, OneShotSettings(epochs=1, order=order), shards,
                  torch.device("cpu"))
    alphas = {k: v.detach().clone() for k, v in darts.alphas.items()}
    weights = {k: v.detach().clone() for k, v in darts.net.named_parameters()}
    darts.arch_step(shards.train_x[:16], shards.train_y[:16], shards.train_x[16:32], shards.train_y[16:32])
    assert any(not torch.equal(alphas[k], v) for k, v in darts.alphas.items())
    # Second order perturbs the weights (virtual step, w+-) and must put them back exactly.
    assert all(torch.equal(weights[k], v) for k, v in darts.net.named_parameters())


def test_the_second_order_step_differs_from_the_first(shards, single_process_group):
    steps = []
    for order in (1, 2):
        torch.manual_seed(0)
        space = build_space("nasbench201")
        darts = Darts(build_supernet(space, CFG), space, OneShotSettings(epochs=1, order=order, learning_rate=0.5),
                      shards, torch.device("cpu"))
        darts.arch_optimizer = torch.optim.SGD(darts.alphas.parameters(), lr=1.0)  # the raw gradient as the step
        before = darts.alphas["cell"].detach().clone()
        darts.arch_step(shards.train_x[:16], shards.train_y[:16], shards.train_x[16:32], shards.train_y[16:32])
        steps.append(darts.alphas["cell"].detach() - before)
    assert not torch.allclose(steps[0], steps[1])


@pytest.mark.parametrize("space_spec", ["nasbench201", "darts", "nasnet", {"type": "nasnet", "combines": ["concat"]}],
                         ids=str)
def test_derivation_gives_valid_distinct_genotypes_the_argmax_first(space_spec):
    space = build_space(space_spec)
    net = build_supernet(space, CFG)
    gen = torch.Generator().manual_seed(3)
    alphas = {k: torch.randn(shape, generator=gen) for k, shape in net.arch_shapes().items()}
    derived = derive_from_alphas(space, alphas, k=5)
    assert len(derived) == 5
    hashes = {space.hash(g) for g, _ in derived}
    assert len(hashes) == 5
    for genotype, _ in derived:
        assert space.validate(genotype) == genotype
    scores = [s for _, s in derived]
    assert scores == sorted(scores, reverse=True)
    best = derived[0][0]
    if space.name == "nasbench201":
        ops = list(space.operations)
        strongest = [ops[int(row[1:].argmax()) + 1] for row in alphas["cell"]]  # "none" (index 0) left out
        assert best["cell"] == build_space("nasbench201").validate(
            {"space": "nasbench201", "cell": "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*strongest)})["cell"]
    if space.name == "darts":  # per node: the two edges whose best non-none op is strongest
        ops = list(space.operations)
        w = torch.softmax(alphas["normal"], -1)
        for n, node in enumerate(best["normal"]):
            first = n * (n + 3) // 2
            strength = [float(w[first + src, 1:].max()) for src in range(2 + n)]
            assert sorted(node["inputs"]) == sorted(sorted(range(2 + n), key=lambda s: -strength[s])[:2])
            assert all(op != "none" for op in node["ops"])
            for src, op in zip(node["inputs"], node["ops"]):
                assert op == ops[int(w[first + src, 1:].argmax()) + 1]
    if space.name == "nasnet":
        assert {b["combine"] for cell in ("normal", "reduction") for b in best[cell]} == {space.combines[0]}


def test_validation_scores_count_every_image_once_whatever_the_world_size(shards, monkeypatch):
    import random

    import kubenas.oneshot.common as common

    sums = []  # what each rank would all-reduce: [loss sum, correct, seen]
    monkeypatch.setattr(common, "all_reduce_sum", lambda values, device: sums.append(values) or values)
    space = build_space("nasbench201")
    torch.manual_seed(0)
    net = build_supernet(space, CFG)
    genotype = space.sample(random.Random(0))
    odd = len(shards.val_x) - (1 - len(shards.val_x) % 2)  # an odd count: two ranks cannot split it evenly
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        part = Shards(shards.train_x, shards.train_y, shards.val_x[:odd], shards.val_y[:odd], rank, world)
        common.evaluate(net, part, 16, torch.device("cpu"), genotype=genotype, running_stats=True)
    whole, first, second = sums
    assert whole[2] == first[2] + second[2] == odd
    assert whole[1] == first[1] + second[1]
    assert whole[0] == pytest.approx(first[0] + second[0], rel=1e-5)


def spos_on(space_spec, shards, **settings) -> Spos:
    space = build_space(space_spec)
    torch.manual_seed(0)
    return Spos(build_supernet(space, CFG), space, OneShotSettings(epochs=1, calibration_batches=1, **settings),
                shards, torch.device("cpu"))


def test_a_scored_path_trains_on_a_copy_and_the_supernet_stays_as_it_was(shards, single_process_group):
    import random
    from dataclasses import replace

    algo = spos_on("nasbench201", shards, fine_tune_steps=6)
    before = {k: v.clone() for k, v in algo.net.state_dict().items()}
    genotype = algo.space.sample(random.Random(0))
    tuned = algo.path_metrics([genotype, genotype])
    assert tuned[0] == tuned[1]  # each path starts from the same shared weights
    assert all(torch.equal(before[k], v) for k, v in algo.net.state_dict().items())
    algo.settings = replace(algo.settings, fine_tune_steps=0)
    untuned = algo.path_metrics([genotype])[0]
    assert tuned[0][0] < untuned[0]  # six steps of its own training lower the path's validation loss
    assert algo.score([genotype]) == [-untuned[0]]


def test_spos_evolution_stops_once_a_one_architecture_space_is_scored(shards, single_process_group, monkeypatch):
    calls = []
    scorer = Spos.score
    monkeypatch.setattr(Spos, "score", lambda self, genotypes: calls.append(len(genotypes)) or scorer(self, genotypes))
    scored = spos_on({"type": "nasbench201", "operations": ["nor_conv_3x3"]}, shards,
                     evolution_population=4, evolution_cycles=3).derive()
    assert len(scored) == 1
    assert calls == [1]  # the initial population only: no cycle runs on an exhausted space


def test_spos_evolution_breeds_by_mutation_from_a_single_parent(shards, single_process_group, monkeypatch):
    from kubenas.strategies.encoding import Encoding

    # Every initial candidate is the same architecture: one parent, no crossover possible.
    monkeypatch.setattr(Encoding, "random", lambda self, rng: [0] * len(self.sizes))
    scored = spos_on({"type": "nasbench201", "operations": ["nor_conv_3x3", "skip_connect"]}, shards,
                     evolution_population=4, evolution_cycles=1).derive()
    assert len(scored) > 1


def test_top_distinct_keeps_one_genotype_per_hash_best_first():
    space = build_space("darts")
    import random

    a = space.sample(random.Random(0))
    swapped = dict(a, normal=[{"inputs": n["inputs"][::-1], "ops": n["ops"][::-1]} for n in a["normal"]])
    b = space.sample(random.Random(1))
    out = top_distinct(space, [(a, 0.5), (swapped, 0.9), (b, 0.7)], k=3)
    assert [item["score"] for item in out] == [0.9, 0.7]  # a and its operand swap are one cell
    assert out[0]["hash"] == space.hash(a)
    # A path whose fine-tuning diverged scores -inf: last, and written as null (strict JSON has no -inf).
    out = top_distinct(space, [(a, float("-inf")), (b, -2.3)], k=2)
    assert [item["score"] for item in out] == [-2.3, None]


def test_the_fingerprint_holds_the_parameters_with_their_defaults(tmp_path, monkeypatch):
    from kubenas.oneshot import parameters

    def fingerprint(**chosen) -> str:
        return supernet_fingerprint(ArchitectureSearchSpec.model_validate_json(spec_file(tmp_path, "spos", **chosen).read_text()))

    default = parameters.ALGORITHM_PARAMETERS["spos"]["fine_tune_steps"]
    # Spelling out a default changes nothing; another value changes the supernet.
    assert fingerprint() == fingerprint(fineTuneSteps=default)
    assert fingerprint() != fingerprint(fineTuneSteps=default + 1)
    # A default changed between versions: a checkpoint made under the old one is not resumed.
    before = fingerprint()
    monkeypatch.setitem(parameters.ALGORITHM_PARAMETERS, "spos",
                        {**parameters.ALGORITHM_PARAMETERS["spos"], "fine_tune_steps": default + 1})
    assert fingerprint() != before


# --- the worker, world size 1 in this process ---------------------------------------------------

@pytest.mark.parametrize("algorithm", ["enas", "darts", "spos"])
def test_the_worker_trains_and_writes_the_top_k_derived_genotypes(algorithm, tmp_path, capfd):
    spec = spec_file(tmp_path, algorithm, **FAST[algorithm])
    assert main(["--spec", str(spec), "--artifacts", str(tmp_path / "art"), "--device", "cpu"], env={}) == 0
    derived = json.loads((tmp_path / "art" / "supernet" / "derived.json").read_text())
    assert derived["algorithm"] == algorithm
    assert derived["fingerprint"] == supernet_fingerprint(ArchitectureSearchSpec.model_validate_json(spec.read_text()))
    space = build_space("nasbench201")
    assert len(derived["genotypes"]) == 2
    assert len({item["hash"] for item in derived["genotypes"]}) == 2
    for item in derived["genotypes"]:
        assert space.hash(space.validate(item["genotype"])) == item["hash"]
        assert -20.0 < item["score"] <= 0.0  # minus a validation cross-entropy (chance: -ln 10)
    assert (tmp_path / "art" / "supernet" / "epoch-1.safetensors").is_file()
    err = capfd.readouterr().err
    assert re.search(r"rank=0 event=epoch epoch=1 epochs=1 .*val_acc=", err)
    # A second start resumes after the last epoch: nothing is trained again.
    assert main(["--spec", str(spec), "--artifacts", str(tmp_path / "art"), "--device", "cpu"], env={}) == 0
    err = capfd.readouterr().err
    assert "resumed_from=1" in err and "event=epoch" not in err


@pytest.mark.parametrize("algorithm, space_spec, parameters", [
    ("darts", {"type": "darts", "blocks": 2}, {"order": 2}),
    ("enas", {"type": "nasnet", "blocks": 2}, FAST["enas"]),
    ("spos", {"type": "darts", "blocks": 2}, FAST["spos"]),
], ids=["darts-darts", "enas-nasnet", "spos-darts"])
def test_the_worker_trains_block_space_supernets(algorithm, space_spec, parameters, tmp_path):
    spec = spec_file(tmp_path, algorithm, space=space_spec, subset=64, **parameters)
    assert main(["--spec", str(spec), "--artifacts", str(tmp_path / "art"), "--device", "cpu"], env={}) == 0
    derived = json.loads((tmp_path / "art" / "supernet" / "derived.json").read_text())
    space = build_space(space_spec)
    assert len({space.hash(space.validate(item["genotype"])) for item in derived["genotypes"]}) == 2


@pytest.mark.parametrize("case, env, message", [
    ("random", {}, "strategy.algorithm: 'random' is not a one-shot algorithm"),
    ("spos", {"WORLD_SIZE": "2", "RANK": "2"}, "environment RANK: rank 2 is out of range"),
    ("spos", {"WORLD_SIZE": "2", "RANK": "1"}, "environment MASTER_ADDR"),
    ("spos", {"KUBENAS_ONESHOT_TIMEOUT": "0"}, "environment KUBENAS_ONESHOT_TIMEOUT"),
    ("topK", {}, "strategy.parameters.topK: 0 is not accepted"),
    ("hyperparameters", {}, "searchSpace.hyperparameters: not accepted with strategy.algorithm enas, darts or spos"),
])
def test_bad_input_exits_2_naming_the_field(case, env, message, tmp_path, capfd):
    if case == "random":
        spec = tmp_path / "s.json"
        spec.write_text(ArchitectureSearchSpec.model_validate({"strategy": {"algorithm": "random"}})
                        .model_dump_json(by_alias=True))
    elif case == "topK":
        spec = spec_file(tmp_path, "spos")
        data = json.loads(spec.read_text())
        data["strategy"]["parameters"]["topK"] = 0
        spec.write_text(json.dumps(data))
    elif case == "hyperparameters":
        spec = tmp_path / "s.json"  # the spec itself refuses it now: the worker reads it through the same models
        data = json.loads(ArchitectureSearchSpec.model_validate({"strategy": {"algorithm": "darts"}})
                          .model_dump_json(by_alias=True))
        data["searchSpace"]["hyperparameters"] = [{"name": "learningRate", "type": "float", "low": 0.01, "high": 0.1}]
        spec.write_text(json.dumps(data))
    else:
        spec = spec_file(tmp_path, case)
    assert main(["--spec", str(spec), "--artifacts", str(tmp_path / "art")], env=env) == 2
    err = capfd.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_checkpoint_of_another_search_is_refused(tmp_path, capfd):
    art = str(tmp_path / "art")
    assert main(["--spec", str(spec_file(tmp_path, "spos", **FAST["spos"])), "--artifacts", art], env={}) == 0
    other = spec_file(tmp_path, "spos", subset=100, **FAST["spos"])
    capfd.readouterr()
    assert main(["--spec", str(other), "--artifacts", art], env={}) == 2
    assert "belongs to another search" in capfd.readouterr().err


# --- two real processes over gloo --------------------------------------------------------------

def start_group(spec: Path, artifacts: Path, logs: Path, timeout: float = 120) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, WORLD_SIZE="2", RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   KUBENAS_ONESHOT_TIMEOUT=str(timeout), OMP_NUM_THREADS="1")
        with open(logs / f"rank{rank}.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "kubenas.oneshot", "--spec", str(spec),
                                           "--artifacts", str(artifacts), "--device", "cpu"],
                                          stderr=log, stdout=subprocess.DEVNULL, env=env,
                                          preexec_fn=die_with_parent()))  # no worker outlives the tests
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def digests(log: Path) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"event=epoch epoch=(\d+) .* weights=(\w+)",
                                                              log.read_text())}


@pytest.mark.parametrize("algorithm", ["enas", "darts"])
def test_two_ranks_hold_the_same_weights_after_every_epoch(algorithm, tmp_path):
    spec = spec_file(tmp_path, algorithm, epochs=2, **FAST[algorithm])
    procs = start_group(spec, tmp_path / "art", tmp_path)
    assert finish(procs) == [0, 0], (tmp_path / "rank0.log").read_text() + (tmp_path / "rank1.log").read_text()
    first, second = digests(tmp_path / "rank0.log"), digests(tmp_path / "rank1.log")
    assert sorted(first) == [1, 2] and first == second
    assert first[1] != first[2]  # the weights did train
    assert (tmp_path / "art" / "supernet" / "derived.json").is_file()


def signal_rank1_after_a_checkpoint(spec, tmp_path, timeout: int, signum) -> tuple[int, float]:
    """Start a group of two, send rank 1 `signum` once an epoch is checkpointed (only the newest
    is kept: any epoch's will do); rank 0's exit code and the seconds it took to exit after."""
    checkpoints = tmp_path / "art" / "supernet"
    procs = start_group(spec, tmp_path / "art", tmp_path, timeout=timeout)
    try:
        wait_for("an epoch's checkpoint", lambda: any(checkpoints.glob("epoch-*.json"))
                 or procs[0].poll() is not None, timeout=180, logs=[tmp_path / "rank0.log"])
        assert procs[0].poll() is None, "finished before a worker could be signalled; give it more epochs"
        procs[1].send_signal(signum)
        sent_at = time.monotonic()
        rc = finish(procs[:1], timeout=60)[0]
        return rc, time.monotonic() - sent_at
    finally:
        procs[1].kill()  # SIGKILL ends a stopped process too
        finish(procs)


def test_losing_a_worker_ends_the_other_and_a_restart_resumes_from_the_last_epoch(tmp_path):
    spec = spec_file(tmp_path, "spos", epochs=8, subset=320, evolutionPopulation=2, evolutionCycles=0)
    checkpoints = tmp_path / "art" / "supernet"
    rc, waited = signal_rank1_after_a_checkpoint(spec, tmp_path, 10, signal.SIGKILL)
    assert waited < 45
    log = (tmp_path / "rank0.log").read_text()
    assert rc == 1, log
    assert "error: lost the worker group" in log and "Traceback" not in log
    done = max(int(m) for m in re.findall(r"epoch-(\d+)\.json", " ".join(os.listdir(checkpoints))))
    assert 1 <= done < 8
    restarted = tmp_path / "restart"
    restarted.mkdir()
    assert finish(start_group(spec, tmp_path / "art", restarted)) == [0, 0], (restarted / "rank0.log").read_text()
    log = (restarted / "rank0.log").read_text()
    assert f"resumed_from={done}" in log
    assert min(digests(restarted / "rank0.log")) == done + 1  # the epochs before were not trained again
    assert json.loads((checkpoints / "derived.json").read_text())["genotypes"]


def test_the_parameter_table_of_the_spec_is_the_workers_own():
    from kubenas.oneshot.parameters import ALGORITHM_PARAMETERS, BOUNDS
    from kubenas.spec import STRATEGY_PARAMETERS, strategy_parameter_name

    for algorithm, defaults in ALGORITHM_PARAMETERS.items():
        assert {strategy_parameter_name(k) for k in defaults} == set(STRATEGY_PARAMETERS[algorithm]), algorithm
        for keyword, default in defaults.items():
            low, high = BOUNDS[keyword]
            assert default is None or low <= default <= high, keyword


ONE_WEIGHT_STEP = """
import datetime, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from kubenas.oneshot.common import OneShotSettings, weight_step
rank, port = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=20))
torch.manual_seed(0)
net = torch.nn.Linear(4, 3)
optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
xb = torch.full((2, 4), float("nan") if rank == 1 else 1.0)  # only rank 1's loss is not finite
try:
    weight_step(DistributedDataParallel(net), optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1), xb,
                torch.zeros(2, dtype=torch.long), OneShotSettings(learning_rate=0.5))
except FloatingPointError as exc:
    print(exc, flush=True)
    # Left as the worker leaves (main): a gloo group's teardown at interpreter exit can abort
    # (SIGABRT) once the peer has gone, so the exit code would not be the one chosen.
    from kubenas.oneshot.worker import _leave
    sys.exit(_leave(3))
"""


def test_a_loss_that_is_not_finite_on_one_rank_stops_every_rank_at_once(tmp_path):
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", ONE_WEIGHT_STEP, str(rank), port], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                              preexec_fn=die_with_parent()) for rank in range(2)]
    try:
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [3, 3], outputs  # both raise, neither waits in the all-reduce
    for out in outputs:
        assert "non-finite on 1 of 2 ranks" in out and "training.learningRate 0.5 is likely too high" in out


def test_a_diverged_supernet_is_a_final_failure_naming_the_learning_rate(tmp_path, capfd, monkeypatch):
    import kubenas.oneshot.spos as spos

    def diverge(*args, **kwargs):
        raise FloatingPointError("the supernet's training loss became non-finite; training.learningRate ...")

    monkeypatch.setattr(spos, "weight_step", diverge)
    spec = spec_file(tmp_path, "spos", **FAST["spos"])
    # 2, as bad input: not restarted (kubenas/local/supernet_group.py, the Job's podFailurePolicy).
    assert main(["--spec", str(spec), "--artifacts", str(tmp_path / "art"), "--device", "cpu"], env={}) == 2
    assert "error: training diverged: " in capfd.readouterr().err


def test_a_peer_that_never_comes_ends_the_worker_within_the_timeout(tmp_path):
    spec = spec_file(tmp_path, "spos")
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               KUBENAS_ONESHOT_TIMEOUT="5", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "kubenas.oneshot", "--spec", str(spec), "--artifacts",
                           str(tmp_path / "art"), "--device", "cpu"], env=env, capture_output=True, text=True,
                          timeout=180, preexec_fn=die_with_parent())
    assert done.returncode == 1, done.stderr
    assert "error: could not join the group of 2" in done.stderr and "Traceback" not in done.stderr


def test_a_silent_peer_ends_the_other_within_the_timeout(tmp_path):
    """A peer that stops answering (SIGSTOP: hung, not gone) is noticed by the collective's timeout."""
    spec = spec_file(tmp_path, "spos", epochs=40, evolutionPopulation=2, evolutionCycles=0)
    rc, waited = signal_rank1_after_a_checkpoint(spec, tmp_path, 8, signal.SIGSTOP)
    log = (tmp_path / "rank0.log").read_text()
    assert rc == 1, log
    assert 8 <= waited < 40, waited  # the timeout, not an instant failure and not a hang
    assert "error: lost the worker group" in log and "Traceback" not in log


def test_kubenas_run_gives_each_worker_its_own_gpu_as_a_local_world_of_one():
    """Two workers on two GPUs each see one GPU and a local world of one (NCCL); three on two
    share them and keep the group as their local world (gloo); on CPU no GPU is named."""
    from kubenas.local.supernet_group import rank_environment

    own = [rank_environment(r, 2, ["0", "1"]) for r in range(2)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in own] == ["0", "1"]
    assert all(e["LOCAL_WORLD_SIZE"] == "1" and e["LOCAL_RANK"] == "0" for e in own)
    assert [e["RANK"] for e in own] == ["0", "1"] and all(e["WORLD_SIZE"] == "2" for e in own)
    shared = [rank_environment(r, 3, ["0", "1"]) for r in range(3)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in shared] == ["0", "1", "0"]
    assert all(e["LOCAL_WORLD_SIZE"] == "3" for e in shared) and [e["LOCAL_RANK"] for e in shared] == ["0", "1", "2"]
    cpu = rank_environment(1, 2, [])
    assert "CUDA_VISIBLE_DEVICES" not in cpu and cpu["LOCAL_WORLD_SIZE"] == "2"
