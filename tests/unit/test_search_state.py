"""The search's bookkeeping without any server: replay, tally, finish rules, live budget, suspend."""

from __future__ import annotations

import pytest

from kubenas.queue.messages import ProgressMessage, ResultMessage, TrialMessage
from kubenas.search_state import (
    EXHAUSTED,
    MAX_DURATION,
    MAX_TRIALS,
    TARGET,
    TOO_MANY_FAILED,
    Verdict,
    SearchState,
)
from kubenas.spec import BudgetSpec, TrainingSpec
from kubenas.strategies.base import Trial

SEARCH = "ns/s"


def message(trial: Trial, created: float) -> TrialMessage:
    return TrialMessage(search=SEARCH, trial_id=trial.id, genotype=trial.genotype, epochs=trial.fidelity or 2,
                        training=TrainingSpec(), created=created, parent_trial_id=trial.parent_id,
                        warm_start=trial.warm_start)


def new_state(max_trials: int = 10, parallelism: int = 2, prefetch: int | None = 0) -> SearchState:
    return SearchState(BudgetSpec(max_trials=max_trials, parallelism=parallelism), message, prefetch=prefetch)


def trial(n: int) -> Trial:
    return Trial(f"t{n:06d}", {"cell": f"g{n}"})


def result(trial_id: str, status: str = "succeeded", reward: float | None = 0.5, epochs: int = 2) -> ResultMessage:
    return ResultMessage(search=SEARCH, trial_id=trial_id, trainer="a", attempt=1, status=status,
                         reward=reward if status != "failed" else None, error="boom" if status == "failed" else None,
                         curve=[reward or 0.0] * epochs if status != "failed" else [], epochs=epochs)


def started(state: SearchState, trial_id: str, epoch: int = 0, attempt: int = 1) -> None:
    state.progress(ProgressMessage(search=SEARCH, trial_id=trial_id, trainer="a", attempt=attempt, epoch=epoch,
                                   time=1.0), now=1.0)


def finish(state: SearchState, trial_id: str, status: str = "succeeded", reward: float | None = 0.5) -> None:
    msg = result(trial_id, status, reward)
    verdict = Verdict.of(msg)
    state.apply_result(msg, verdict, verdict.accuracy, now=2.0)


def snapshot(state: SearchState) -> dict:
    return {"tally": {k: getattr(state.tally, k) for k in
                      ("created", "cancelled", "succeeded", "failed", "stopped", "best_reward", "best_trial",
                       "best_genotype")},
            "recent": list(state.tally.recent), "inflight": sorted(state.inflight),
            "summary": state.summary().model_dump()}


def test_replaying_the_events_gives_the_live_state():
    live = new_state(max_trials=20, parallelism=4)
    for n in range(7):
        live.create(trial(n), f"h{n}", now=float(n))
    live.create(Trial("t000007", {"cell": "g7"}, parent_id="t000003", warm_start="inherit"), "h7", now=7.0)
    started(live, "t000000")
    finish(live, "t000000", reward=0.7)
    finish(live, "t000001", "failed")
    finish(live, "t000002", "stopped", 0.3)
    finish(live, "t000003", reward=0.9)
    live.cancel("t000004", "finishing", now=3.0)
    events = live.take_unsaved()
    assert [e["e"] for e in events].count("trial") == 8 and live.unsaved == []

    replayed = new_state(max_trials=20, parallelism=4)
    for event in events:
        replayed.apply(event)
    assert snapshot(replayed)["tally"] == snapshot(live)["tally"]
    assert snapshot(replayed)["recent"] == snapshot(live)["recent"]
    assert snapshot(replayed)["inflight"] == snapshot(live)["inflight"] == ["t000005", "t000006", "t000007"]
    assert replayed.tally.best_trial == "t000003" and replayed.tally.best_reward == 0.9
    assert replayed.tally.best_genotype == {"cell": "g3"}
    assert replayed.inflight["t000006"].message.created == 6.0  # the message is rebuilt as it was sent
    rebuilt, sent = replayed.inflight["t000007"].message, live.inflight["t000007"].message
    assert rebuilt == sent and (rebuilt.parent_trial_id, rebuilt.warm_start) == ("t000003", "inherit")


def test_the_summary_counts():
    state = new_state(max_trials=30, parallelism=20)
    for n in range(15):
        state.create(trial(n), "h", now=0.0)
    started(state, "t000013")
    started(state, "t000014", epoch=2)
    for n in range(12):
        finish(state, f"t{n:06d}", "failed" if n == 5 else "succeeded", reward=n / 20)
    state.cancel("t000012", "finishing", now=1.0)
    counts = state.summary(deduplicated=4).trials
    assert (counts.total, counts.pending, counts.running) == (14, 0, 2)
    assert (counts.succeeded, counts.failed, counts.stopped, counts.deduplicated) == (11, 1, 0, 4)
    summary = state.summary()
    assert summary.best_trial == "t000011" and summary.best_reward == pytest.approx(0.55)
    assert len(summary.recent) == 10 and summary.recent[-1].id == "t000011"
    assert not summary.finished and summary.finish_reason is None
    assert state.inflight["t000014"].epoch == 2 and state.inflight["t000014"].trainer == "a"


def test_a_diverged_network_is_a_bad_architecture_not_a_failure():
    verdict = Verdict.of(ResultMessage(search=SEARCH, trial_id="t000000", trainer="a", attempt=1,
                                       status="diverged", reward=0.1))
    assert (verdict.status, verdict.accuracy, verdict.error) == ("succeeded", 0.0, "diverged")
    assert Verdict.of(result("t000000", "failed")).accuracy is None


def test_room_keeps_parallelism_plus_prefetch_in_flight_and_follows_parallelism_changes():
    state = new_state(max_trials=100, parallelism=2, prefetch=None)
    assert state.target_in_flight == 3 and state.room() == 3  # 1 + 2 // 8 prefetched
    for n in range(3):
        state.create(trial(n), "h", now=0.0)
    assert state.room() == 0
    changed = state.change_budget(BudgetSpec(max_trials=100, parallelism=16))
    assert changed == {"parallelism": (2, 16)}
    assert state.target_in_flight == 16 + 3 and state.room() == 16
    state.change_budget(BudgetSpec(max_trials=5, parallelism=16))
    assert state.room() == 2  # maxTrials bounds it


def test_max_trials_finishes_once_nothing_is_in_flight():
    state = new_state(max_trials=2)
    state.create(trial(0), "h", now=0.0)
    state.create(trial(1), "h", now=0.0)
    assert state.room() == 0 and state.finish_reason() is None
    finish(state, "t000000")
    assert state.finish_reason() is None
    finish(state, "t000001")
    assert state.finish_reason() == MAX_TRIALS


def test_too_many_failures_then_target_then_duration_in_that_order():
    state = SearchState(BudgetSpec(max_trials=10, max_failed_trials=1, max_duration="10s"), message, target=0.8)
    for n in range(3):
        state.create(trial(n), "h", now=0.0)
    state.advance(9.0)
    assert state.finish_reason() is None
    state.advance(1.0)
    assert state.finish_reason() == MAX_DURATION
    finish(state, "t000000", reward=0.85)
    assert state.finish_reason() == TARGET
    finish(state, "t000001", "failed")
    assert state.finish_reason() == TARGET  # one failure is allowed
    finish(state, "t000002", "failed")
    assert state.finish_reason() == TOO_MANY_FAILED


def test_an_exhausted_strategy_finishes_once_its_trials_are_done():
    state = new_state(max_trials=10)
    state.create(trial(0), "h", now=0.0)
    state.exhausted = True
    assert state.room() == 0 and state.finish_reason() is None
    finish(state, "t000000")
    assert state.finish_reason() == EXHAUSTED


def test_finishing_cancels_what_waits_stops_what_runs_and_ends_when_nothing_is_left():
    state = new_state(max_trials=10, parallelism=3)
    for n in range(3):
        state.create(trial(n), "h", now=0.0)
    started(state, "t000001")
    state.begin_finish(TARGET)
    assert state.room() == 0
    cancelled, to_stop = state.finish_step(grace_over=False, now=1.0)
    assert (cancelled, to_stop) == (["t000000", "t000002"], ["t000001"]) and not state.finished
    cancelled, to_stop = state.finish_step(grace_over=True, now=2.0)
    assert (cancelled, to_stop) == (["t000001"], []) and state.finished
    summary = state.summary()
    assert summary.finished and summary.finish_reason == TARGET
    assert summary.trials.total == 0 and state.tally.cancelled == 3


def test_max_trials_lowered_below_the_trials_created_cancels_the_newest_waiting_ones():
    state = new_state(max_trials=10, parallelism=6)
    for n in range(6):
        state.create(trial(n), "h", now=0.0)
    finish(state, "t000000")
    for n in (1, 2, 5):
        started(state, f"t{n:06d}")
    state.change_budget(BudgetSpec(max_trials=3, parallelism=6))
    # done 1 + running 3 = 4 > 3: every waiting trial goes; the running ones finish (their work counts)
    assert state.over_budget(now=1.0) == ["t000004", "t000003"]
    assert state.over_budget(now=1.0) == []  # idempotent
    assert state.room() == 0 and state.finish_reason() is None
    for n in (1, 2, 5):
        finish(state, f"t{n:06d}")
    assert state.finish_reason() == MAX_TRIALS
    t = state.tally
    assert (t.created, t.cancelled, t.total, t.done) == (6, 2, 4, 4)


def test_max_trials_lowered_cancels_only_as_many_as_needed():
    state = new_state(max_trials=10, parallelism=6)
    for n in range(6):
        state.create(trial(n), "h", now=0.0)
    state.change_budget(BudgetSpec(max_trials=4, parallelism=6))
    assert state.over_budget(now=1.0) == ["t000005", "t000004"]
    assert state.tally.total == 4 and sorted(state.inflight) == ["t000000", "t000001", "t000002", "t000003"]


def test_suspend_withdraws_what_no_trainer_took_and_resume_hands_it_out_again():
    state = new_state(max_trials=10, parallelism=4)
    for n in range(4):
        state.create(trial(n), "h", now=0.0)
    started(state, "t000000")
    withdrawn = state.suspend(delivered=frozenset({"t000001"}))  # taken by a trainer, no report yet
    assert withdrawn == ["t000002", "t000003"]
    assert sorted(state.inflight) == ["t000000", "t000001"] and state.room() == 0
    counts = state.summary().trials
    assert (counts.total, counts.pending, counts.running) == (4, 3, 1)  # withdrawn trials still count

    state.advance(100.0)
    assert state.elapsed == 0.0  # a suspended search's clock stands still
    finish(state, "t000000")
    finish(state, "t000001")
    assert state.inflight == {} and state.finish_reason() is None  # drained, but not finished

    returned = state.resume()
    assert [f.trial_id for f in returned] == ["t000002", "t000003"]
    assert sorted(state.inflight) == ["t000002", "t000003"] and state.room() == 2
    state.advance(1.0)
    assert state.elapsed == 1.0


def test_a_withdrawn_trial_that_finishes_anyway_counts_once():
    state = new_state(max_trials=2, parallelism=2)
    state.create(trial(0), "h", now=0.0)
    state.create(trial(1), "h", now=0.0)
    state.suspend()
    finish(state, "t000000")  # a trainer took it just before it was withdrawn
    assert state.pending("t000000") is None and state.tally.succeeded == 1
    assert [f.trial_id for f in state.resume()] == ["t000001"]
    finish(state, "t000001")
    assert state.finish_reason() == MAX_TRIALS and state.tally.total == 2


def test_finishing_while_suspended_cancels_the_withdrawn_trials():
    state = new_state(max_trials=5, parallelism=2)
    state.create(trial(0), "h", now=0.0)
    state.suspend()
    state.begin_finish(MAX_DURATION)
    assert state.finish_step(grace_over=False, now=1.0) == (["t000000"], [])
    assert state.finished and state.withdrawn == {}
