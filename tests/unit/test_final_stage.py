"""The final stage without any server: candidates, the final recipe, the winner, replay."""

from __future__ import annotations

import json

import pytest

from kubenas.final_stage import (
    Candidate,
    FinalResult,
    FinalStage,
    Leaderboard,
    choose_winner,
    final_genotype,
    final_trial_ids,
    final_training,
)
from kubenas.queue.messages import MessageRejected, ResultMessage, TrialMessage, decode
from kubenas.search_state import MAX_TRIALS, TOO_MANY_FAILED, SearchState, Verdict
from kubenas.spec import ArchitectureSearchSpec, BudgetSpec, FinalSpec, TrainingSpec
from kubenas.strategies.base import Trial

SEARCH = "ns/s"


# --- the leaderboard: top-k distinct by canonical hash ---------------------------------------

def test_leaderboard_keeps_the_best_k_with_one_entry_per_hash():
    board = Leaderboard(size=3)
    board.note("t000001", "aaaa", {"g": 1}, 0.5)
    board.note("t000002", "bbbb", {"g": 2}, 0.7)
    board.note("t000003", "aaaa", {"g": 1}, 0.9)  # the same architecture again, better: replaces its entry
    board.note("t000004", "cccc", {"g": 3}, 0.6)
    board.note("t000005", "dddd", {"g": 4}, 0.4)  # fourth distinct and worst: not kept
    board.note("t000006", "bbbb", {"g": 2}, 0.1)  # a worse result of a held hash changes nothing
    board.note("t000007", "eeee", {"g": 5}, None)  # no reward: never a candidate
    top = board.top()
    assert [(c.trial_id, c.genotype_hash, c.reward) for c in top] == [
        ("t000003", "aaaa", 0.9), ("t000002", "bbbb", 0.7), ("t000004", "cccc", 0.6)]
    assert [c.trial_id for c in board.top(2)] == ["t000003", "t000002"]


def test_leaderboard_ties_go_to_the_earlier_trial():
    board = Leaderboard(size=2)
    board.note("t000009", "aaaa", {}, 0.5)
    board.note("t000002", "bbbb", {}, 0.5)
    board.note("t000005", "cccc", {}, 0.5)
    assert [c.trial_id for c in board.top()] == ["t000002", "t000005"]


def test_final_trial_ids_are_distinct_even_when_hashes_share_a_prefix():
    cands = [Candidate("t1", "abcdef0123456789", {}, 0.9), Candidate("t2", "abcdef01ffff0000", {}, 0.8),
             Candidate("t3", "99999999aaaa", {}, 0.7)]
    ids = final_trial_ids(cands)
    assert ids[2] == "final-99999999"
    assert len(set(ids)) == 3 and all(i.startswith("final-abcdef01") for i in ids[:2])
    for trial_id in ids:  # valid on the wire
        TrialMessage(search=SEARCH, trial_id=trial_id, genotype={}, epochs=1, training=TrainingSpec())


# --- the final recipe ------------------------------------------------------------------------

def test_final_training_is_the_search_training_at_the_final_size_and_recipe():
    spec = ArchitectureSearchSpec.model_validate({
        "training": {"dataset": {"name": "digits", "trainSubset": 200}, "epochs": 1, "channels": 4,
                     "cellsPerStage": 1, "learningRate": 0.1, "earlyStopping": {"algorithm": "median"}},
        "final": {"topK": 3, "epochs": 30, "channels": 36, "cellsPerStage": 6, "dropPath": 0.2,
                  "augmentation": {"cutout": 16}}})
    t = final_training(spec)
    assert t.augmentation.cutout == 16 and spec.training.augmentation is None
    assert (t.epochs, t.channels, t.cells_per_stage, t.drop_path, t.auxiliary_head) == (30, 36, 6, 0.2, True)
    assert t.dataset.train_subset is None  # the whole training split
    assert t.dataset.name == "digits" and t.learning_rate == 0.1  # what the final section leaves alone
    assert t.early_stopping.algorithm == "none"
    assert spec.training.dataset.train_subset == 200 and spec.training.epochs == 1  # the spec is untouched


def test_final_size_scales_with_phi_like_the_export():
    spec = ArchitectureSearchSpec.model_validate({"training": {"channels": 16, "cellsPerStage": 2},
                                                  "final": {"phi": 2}})
    t = final_training(spec)
    assert (t.cells_per_stage, t.channels) == (3, 20)  # ceil(2 * 1.44), 16 * 1.21 to a multiple of 4


def test_final_genotype_drops_the_searched_hyperparameters_the_recipe_sets():
    g = {"space": "nasbench201", "cell": "x", "hparams": {"epochs": 3, "dropPath": 0.0, "learningRate": 0.02}}
    assert final_genotype(g)["hparams"] == {"learningRate": 0.02}
    assert g["hparams"]["epochs"] == 3
    assert final_genotype({"space": "nasbench201", "cell": "x"}) == {"space": "nasbench201", "cell": "x"}


def test_a_final_learning_rate_wins_over_a_searched_one(tmp_path):
    import redis

    from kubenas.queue.keys import SearchKeys
    from kubenas.training import TrainConfig
    from kubenas_controller.controller import Controller

    genotype = {"space": "nasbench201", "cell": "x", "hparams": {"learningRate": 0.02, "momentum": 0.8}}

    def final_learning_rate(final: dict) -> float:
        spec = ArchitectureSearchSpec.model_validate({
            "searchSpace": {"type": "nasbench201"}, "training": {"learningRate": 0.1, "dataset": {"name": "digits"}},
            "final": final})
        controller = Controller(spec, SearchKeys("ns", "s"), redis.Redis(port=1), str(tmp_path))  # no Redis reached
        message = controller._final_message({"id": "final-aaaaaaaa", "genotype": genotype})
        # As the trainer does: the trial's training settings, then the genotype's hparams on top.
        cfg = TrainConfig(learning_rate=message.training.learning_rate, momentum=message.training.momentum)
        cfg = cfg.with_hparams(message.genotype["hparams"])
        assert cfg.momentum == 0.8  # the other searched hyperparameters stay
        return cfg.learning_rate

    assert final_learning_rate({"learningRate": 0.005}) == 0.005
    assert final_learning_rate({}) == 0.02  # no final learning rate: the searched one is the candidate's


def test_final_spec_refuses_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="topK"):
        ArchitectureSearchSpec.model_validate({"final": {"topK": 0}})
    with pytest.raises(ValueError, match="dropPath"):
        ArchitectureSearchSpec.model_validate({"final": {"dropPath": 1.5}})
    assert ArchitectureSearchSpec.model_validate({}).final is None
    assert FinalSpec().top_k == 5


# --- the winner: validation accuracy only ------------------------------------------------------

def test_the_winner_is_chosen_by_validation_accuracy_never_by_test_accuracy():
    results = [FinalResult("final-a", "succeeded", 0.90, test_accuracy=0.70, export_path="/a", parameters=10),
               FinalResult("final-b", "succeeded", 0.85, test_accuracy=0.99, export_path="/b", parameters=5),
               FinalResult("final-c", "failed", None, error="OOM"),
               FinalResult("final-d", "succeeded", 0.95, export_path=None)]  # trained, but no export
    assert choose_winner(results).trial_id == "final-a"
    tie = [FinalResult("final-x", "succeeded", 0.9, export_path="/x", parameters=20),
           FinalResult("final-y", "succeeded", 0.9, export_path="/y", parameters=10)]
    assert choose_winner(tie).trial_id == "final-y"  # the smaller network
    assert choose_winner([FinalResult("final-c", "failed", None, error="OOM")]) is None


def test_a_stage_without_any_model_says_why():
    stage = FinalStage.begin([Candidate("t1", "aaaaaaaa", {}, 0.5)])
    stage.note_result({"id": "final-aaaaaaaa", "status": "failed", "error": "CUDA out of memory"})
    model, error = stage.decide()
    assert model is None and "CUDA out of memory" in error and "1 final trials" in error


# --- through the search state: stage events, separate counts, replay -------------------------

def message(trial: Trial, created: float) -> TrialMessage:
    return TrialMessage(search=SEARCH, trial_id=trial.id, genotype=trial.genotype, epochs=1, training=TrainingSpec())


def final_message(event: dict) -> TrialMessage:
    return TrialMessage(search=SEARCH, trial_id=event["id"], genotype=event["genotype"], epochs=7,
                        training=TrainingSpec(epochs=7), final=True)


def new_state(top_k: int | None = 2) -> SearchState:
    return SearchState(BudgetSpec(max_trials=3, parallelism=3), message, prefetch=0, final_top_k=top_k,
                       make_final_message=final_message)


def apply(state: SearchState, msg: ResultMessage) -> None:
    verdict = Verdict.of(msg)
    state.apply_result(msg, verdict, verdict.accuracy, now=2.0)


def search_result(trial_id: str, reward: float) -> ResultMessage:
    return ResultMessage(search=SEARCH, trial_id=trial_id, trainer="a", attempt=1, status="succeeded", reward=reward,
                         epochs=1)


def final_result(trial_id: str, accuracy: float, test: float) -> ResultMessage:
    return ResultMessage(search=SEARCH, trial_id=trial_id, trainer="b", attempt=1, status="succeeded",
                         reward=accuracy, epochs=7, test_accuracy=test, test_images=50,
                         export_path=f"/artifacts/final/{trial_id}", cost={"params": 1234.0})


def run_search(state: SearchState) -> None:
    for n, (h, reward) in enumerate([("aaaaaaaa11", 0.6), ("bbbbbbbb22", 0.8), ("aaaaaaaa11", 0.7)]):
        state.create(Trial(f"t{n:06d}", {"cell": h}), h, now=1.0)
    for n, reward in enumerate([0.6, 0.8, 0.7]):
        apply(state, search_result(f"t{n:06d}", reward))
    assert state.finish_reason() == MAX_TRIALS
    state.begin_finish(MAX_TRIALS)
    state.finish_step(grace_over=False, now=3.0)
    assert state.finished and not state.done and state.in_final_stage


def test_the_final_stage_trains_the_top_k_distinct_and_ends_with_the_winner():
    state = new_state(top_k=2)
    run_search(state)
    summary = state.summary()
    assert summary.stage == "finalTraining" and not summary.finished and summary.finish_reason == MAX_TRIALS

    flights = state.begin_final_stage(now=4.0)
    assert [f.trial_id for f in flights] == ["final-bbbbbbbb", "final-aaaaaaaa"]  # best first, one per hash
    assert all(f.message.final and f.message.epochs == 7 for f in flights)
    assert flights[1].message.genotype == {"cell": "aaaaaaaa11"}
    assert state.tally.total == 3  # final trials are not the search's: its counts and budget stay
    assert state.room() == 0
    assert state.summary().final_trials.total == 2 and state.summary().trials.pending == 0

    apply(state, final_result("final-bbbbbbbb", 0.91, test=0.80))
    assert not state.final.trained
    apply(state, final_result("final-aaaaaaaa", 0.93, test=0.75))
    assert state.final.trained and state.tally.succeeded == 3 and state.tally.best_reward == 0.8
    model, error = state.final.decide()
    assert error is None and model.trial == "final-aaaaaaaa" and model.source_trial == "t000002"
    assert (model.validation_accuracy, model.test_accuracy, model.test_images, model.parameters) == (0.93, 0.75, 50, 1234)
    state.end_final_stage(model, None, now=5.0)
    summary = state.summary()
    assert state.done and summary.finished and summary.final_model == model and summary.final_error is None
    assert summary.final_trials.succeeded == 2 and summary.trials.succeeded == 3


def test_a_restart_replays_the_final_stage_from_the_log():
    live = new_state()
    run_search(live)
    live.begin_final_stage(now=4.0)
    apply(live, final_result("final-bbbbbbbb", 0.91, test=0.80))
    events = live.take_unsaved()

    replayed = new_state()
    for event in events:
        replayed.apply(event)
    # The stage's events say the search had finished, and why: its finish rules stay out of the way.
    assert replayed.finished and replayed.finishing == MAX_TRIALS
    assert sorted(replayed.inflight) == ["final-aaaaaaaa"] and replayed.inflight["final-aaaaaaaa"].message.final
    assert replayed.final.waiting == ["final-aaaaaaaa"] and replayed.in_final_stage
    assert replayed.summary().model_dump() == live.summary().model_dump()

    model, _ = live.final.decide() if live.final.trained else (None, None)
    assert model is None  # one final trial is still waiting
    apply(live, final_result("final-aaaaaaaa", 0.5, test=0.9))
    model, _ = live.final.decide()
    live.end_final_stage(model, None, now=6.0)
    for event in live.take_unsaved():
        replayed.apply(event)
    assert replayed.done and replayed.summary().final_model.trial == "final-bbbbbbbb"


def test_a_skipped_final_stage_replays_as_ended():
    live = new_state()
    run_search(live)
    live.end_final_stage(None, "skipped: the search ended with TooManyFailedTrials", now=4.0)
    replayed = new_state()
    for event in live.take_unsaved():
        replayed.apply(event)
    assert replayed.done and replayed.summary().final_error.startswith("skipped")
    assert replayed.summary().model_dump() == live.summary().model_dump()


def test_a_cancelled_final_trial_ends_without_blocking_the_stage():
    state = new_state(top_k=1)
    run_search(state)
    (flight,) = state.begin_final_stage(now=4.0)
    state.cancel(flight.trial_id, "gone", now=5.0)
    assert state.tally.cancelled == 0 and state.final.trained
    model, error = state.final.decide()
    assert model is None and error


def test_without_spec_final_a_finished_search_is_done():
    state = new_state(top_k=None)
    state.create(Trial("t000000", {"cell": "a"}), "aaaa", now=1.0)
    apply(state, search_result("t000000", 0.5))
    state.begin_finish(TOO_MANY_FAILED)
    state.finish_step(grace_over=True, now=2.0)
    assert state.done and state.summary().finished and state.summary().stage == "searching"
    assert state.leaderboard.top() == []


def test_result_messages_carry_the_final_fields_and_refuse_bad_ones():
    msg = final_result("final-aaaaaaaa", 0.9, test=0.8)
    assert decode(msg.encode(), ResultMessage) == msg
    bad = msg.model_dump(mode="json")
    bad["test_accuracy"] = 1.5
    with pytest.raises(MessageRejected, match="test_accuracy"):
        decode(json.dumps(bad).encode(), ResultMessage)


# --- the operator's phase: Searching -> FinalTraining -> Succeeded (or Failed) -----------------

def test_the_phase_goes_searching_then_final_training_then_succeeded():
    from kubenas.spec import SearchSummary
    from kubenas_operator import status as st

    def observe(current: dict, **summary) -> dict:
        return st.compute_status(current, st.Observation(now="2026-01-01T00:00:00Z", generation=1, suspended=False,
                                                         selector="sel", summary=SearchSummary.model_validate(summary)))

    s = observe({}, trials={"total": 2, "running": 2}, updated="u1")
    assert s["phase"] == "Searching"
    s = observe(s, trials={"total": 3, "succeeded": 3}, finishReason="MaxTrialsReached", stage="finalTraining",
                finalTrials={"total": 2, "running": 2}, updated="u2")
    assert s["phase"] == "FinalTraining" and s["finishReason"] == "MaxTrialsReached" and "completionTime" not in s
    model = {"trial": "final-aaaaaaaa", "genotypeHash": "aaaaaaaa11", "path": "/artifacts/final/model",
             "validationAccuracy": 0.9, "testAccuracy": 0.88, "testImages": 100, "parameters": 1000, "candidates": 2}
    done = observe(s, trials={"total": 3, "succeeded": 3}, finished=True, finishReason="MaxTrialsReached",
                   stage="finalTraining", finalModel=model, updated="u3")
    assert done["phase"] == "Succeeded" and done["finalModel"]["testAccuracy"] == 0.88
    assert st.condition(done, "Complete")["reason"] == "MaxTrialsReached"
    failed = observe(s, trials={"total": 3, "succeeded": 3}, finished=True, finishReason="MaxTrialsReached",
                     stage="finalTraining", finalError="none of the 2 final trials produced an exported model (OOM)",
                     updated="u3")
    assert failed["phase"] == "Failed"
    assert st.condition(failed, "Failed")["reason"] == "FinalTrainingFailed"
    assert "OOM" in st.condition(failed, "Failed")["message"]


def test_the_operator_refuses_a_final_stage_without_an_artifacts_volume():
    from kubenas.errors import InvalidSpec
    from kubenas_operator.validation import read_spec

    body = {"metadata": {"name": "s", "namespace": "ns"}, "spec": {"final": {"topK": 2}}}
    with pytest.raises(InvalidSpec, match="spec.artifacts.enabled: must be true with spec.final"):
        read_spec(body)
    body["spec"]["artifacts"] = {"enabled": True}
    assert read_spec(body).spec.final.top_k == 2


# --- the export of trained weights --------------------------------------------------------------

GENOTYPE = {"space": "nasbench201",
            "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"}


def test_a_trained_export_carries_its_weights_and_its_normalisation(tmp_path):
    import torch

    from kubenas import export
    from kubenas.errors import KubenasError
    from kubenas.nn import ModelConfig, build_model

    cfg = ModelConfig(channels=4, cells_per_stage=1, num_classes=3, in_channels=3, auxiliary=True)
    torch.manual_seed(1)
    trained = build_model(GENOTYPE, cfg).eval()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    size = export.compound_scale(1, 4, 0.0, (3, 8, 8))
    meta = export.export(GENOTYPE, tmp_path / "a", "torchscript", size, weights=trained.state_dict(),
                         model_config=cfg, mean=mean, std=std, class_names=["cat", "dog", "eel"],
                         value_range=(0.0, 1.0))
    assert meta["weights"] == "trained" and meta["files"]["safetensors"] == "model.safetensors"
    assert meta["preprocessing"]["mean"] == mean and meta["preprocessing"]["class_names"] == ["cat", "dog", "eel"]

    images = torch.rand(5, 3, 8, 8)  # as they come: [0, 1]
    expected = trained((images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    scripted = torch.jit.load(str(tmp_path / "a" / "model.torchscript.pt"))
    assert torch.allclose(scripted(images), expected, atol=1e-5)

    # `kubenas export --weights`: the file alone rebuilds the same network, normalisation included.
    size, options = export.trained_options(tmp_path / "a" / "model.safetensors", GENOTYPE)
    assert (size.cells, size.channels, options["num_classes"], options["mean"]) == (1, 4, 3, mean)
    export.export(GENOTYPE, tmp_path / "b", "torchscript", size, **options)
    again = torch.jit.load(str(tmp_path / "b" / "model.torchscript.pt"))
    assert torch.allclose(again(images), expected, atol=1e-5)
    with pytest.raises(KubenasError, match="--channels: 8 is not what"):
        export.trained_options(tmp_path / "a" / "model.safetensors", GENOTYPE, channels=8)
    other = {"space": "nasbench201", "cell": GENOTYPE["cell"].replace("avg_pool_3x3", "skip_connect")}
    with pytest.raises(KubenasError, match="holds the weights of architecture"):
        export.trained_options(tmp_path / "a" / "model.safetensors", other)
    (tmp_path / "junk.safetensors").write_text("not safetensors")
    with pytest.raises(KubenasError, match="not a readable safetensors file"):
        export.trained_options(tmp_path / "junk.safetensors", GENOTYPE)


def test_the_finished_event_names_the_final_model():
    from kubenas_operator import events

    warning, reason, message = events.finished({
        "phase": "Succeeded", "finishReason": "MaxTrialsReached", "bestReward": 0.8, "bestTrial": "t000002",
        "finalModel": {"trial": "final-aaaaaaaa", "validationAccuracy": 0.9, "testAccuracy": 0.88,
                       "path": "/artifacts/final/model"}})
    assert not warning and reason == "Succeeded"
    assert "final model final-aaaaaaaa" in message and "test accuracy 0.88" in message and "/artifacts/final/model" in message


def test_kubenas_export_weights_rebuilds_the_trained_network_from_the_file(tmp_path, capsys):
    import torch

    from kubenas import export
    from kubenas.cli import main
    from kubenas.nn import ModelConfig, build_model

    cfg = ModelConfig(channels=4, cells_per_stage=1, num_classes=5, in_channels=3)
    trained = build_model(GENOTYPE, cfg).eval()
    export.export(GENOTYPE, tmp_path / "final", "torchscript", export.compound_scale(1, 4, 0.0, (3, 8, 8)),
                  weights=trained.state_dict(), model_config=cfg, mean=[0.5] * 3, std=[0.25] * 3)
    (tmp_path / "g.json").write_text(json.dumps(GENOTYPE))

    code = main(["export", str(tmp_path / "g.json"), "--weights", str(tmp_path / "final" / "model.safetensors"),
                 "--output", str(tmp_path / "again")])
    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert "model.safetensors" in summary["files"] and summary["input_shape"] == "3x8x8"
    images = torch.rand(2, 3, 8, 8)
    scripted = torch.jit.load(str(tmp_path / "again" / "model.torchscript.pt"))
    assert torch.allclose(scripted(images), trained((images - 0.5) / 0.25), atol=1e-5)

    code = main(["export", str(tmp_path / "g.json"), "--weights", str(tmp_path / "final" / "model.safetensors"),
                 "--classes", "7", "--output", str(tmp_path / "wrong")])
    err = capsys.readouterr().err
    assert code != 0 and "--classes: 7 is not what" in err and "Traceback" not in err


# --- a final trial on the trainer: test, export, and what must not end it ----------------------

def _digits_tree(root):
    from benchmarks import make_digits_imagefolder as make_digits

    make_digits.write_digits_imagefolder(root, size=16, limit=200)
    return root


def _final_trainer(tmp_path, artifacts: bool = True):
    import redis

    from kubenas.queue.keys import SearchKeys
    from kubenas_trainer.trainer import Trainer, TrainerOptions

    # No Redis is reached: _train is the trainer's whole training step, export included.
    trainer = Trainer(redis.Redis(port=1, socket_connect_timeout=0.2), SearchKeys("ns", "s"),
                      TrainerOptions(consumer="t0", device="cpu", threads=1,
                                     artifacts=str(tmp_path / "artifacts") if artifacts else None))
    trainer._on_epoch = lambda claim, report: True  # the progress stream needs Redis
    return trainer


def _final_claim(root, trial_id: str = "final-aaaaaaaa"):
    training = TrainingSpec.model_validate({
        "epochs": 1, "channels": 4, "cellsPerStage": 1, "batchSize": 32,
        "dataset": {"name": "imagefolder", "root": str(root), "resolution": 16}})

    class Claim:
        trial = TrialMessage(search=SEARCH, trial_id=trial_id, genotype=GENOTYPE, epochs=1, training=training,
                             final=True)
        entry_id, attempt, reclaimed = "1-0", 1, False

    return Claim()


def test_a_test_image_unreadable_while_testing_keeps_the_trained_final_model(tmp_path, monkeypatch, caplog):
    import logging
    from pathlib import Path

    from kubenas.training import datasets

    root = _digits_tree(tmp_path / "digits")
    real = datasets.load_test_split

    def then_cut_one(spec):  # a file that goes bad after the scan (a flaky volume, a file replaced)
        test = real(spec)
        path = Path(test.dataset.samples[0][0])
        path.write_bytes(path.read_bytes()[:path.stat().st_size * 4 // 5])
        return test

    monkeypatch.setattr(datasets, "load_test_split", then_cut_one)
    trainer = _final_trainer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="kubenas.trainer"):
        outcome = trainer._train(_final_claim(root))
    assert outcome.status == "succeeded" and outcome.test_accuracy is None and outcome.test_images is None
    assert (Path(outcome.export_path) / "model.safetensors").exists()  # trained and exported all the same
    assert "no test accuracy" in caplog.text and "became unreadable" in caplog.text


def test_a_final_trial_without_an_artifact_store_fails_at_once_and_is_never_retried(tmp_path):
    trainer = _final_trainer(tmp_path, artifacts=False)
    posted, retried = [], []
    trainer._post = lambda claim, result: posted.append(result) or True
    trainer.queue.retry_later = lambda claim, error: retried.append(error) or True
    trainer._work(_final_claim(tmp_path / "no-data-needed"))
    assert not retried and len(posted) == 1
    assert posted[0].status == "failed" and "no artifact store" in posted[0].error
    assert trainer._dataset is None  # refused before loading data, let alone training


def test_the_final_export_starts_from_an_empty_staging_directory_and_never_follows_a_lost_lease(tmp_path):
    import os
    from pathlib import Path

    from kubenas.training import TrialInterrupted

    root = _digits_tree(tmp_path / "digits")
    final = tmp_path / "artifacts" / "final"
    staging = final / f".final-aaaaaaaa.{os.getpid()}"  # left by an earlier process with the same pid
    staging.mkdir(parents=True)
    (staging / "left-by-an-earlier-run").write_text("stale")
    trainer = _final_trainer(tmp_path)
    out = Path(trainer._train(_final_claim(root)).export_path)
    assert out == final / "final-aaaaaaaa" and (out / "model.safetensors").exists()
    assert not (out / "left-by-an-earlier-run").exists() and not staging.exists()

    def lose_the_lease(claim, report):  # the heartbeat found another trainer owns the trial
        trainer.lost.set()
        return True

    trainer._on_epoch = lose_the_lease
    with pytest.raises(TrialInterrupted, match="lease lost"):
        trainer._train(_final_claim(root, "final-bbbbbbbb"))
    assert sorted(p.name for p in final.iterdir()) == ["final-aaaaaaaa"]  # nothing written for the lost trial
