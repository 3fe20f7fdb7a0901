"""spec.final in a cluster: the controller's summary, copied by the operator into the resource's
status on a real API server (whose schema would prune a field it does not declare), gives the
phases Searching -> FinalTraining -> Succeeded and status.finalModel; a final stage without the
artifact store (where the trained model is written) is refused naming the field."""

from __future__ import annotations

import pytest

from tests.operator.support import search_body, wait_for, write_summary
from tests.operator.test_reconcile import condition, create, trainer_replicas

pytestmark = pytest.mark.kube

GENOTYPE = {"space": "nasbench201",
            "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"}


def final_spec(**overrides) -> dict:
    spec = search_body("unused", "unused")["spec"]
    spec.update(final={"topK": 2, "epochs": 3, "channels": 16}, artifacts={"enabled": True})
    spec.update(overrides)
    return spec


def test_the_final_stage_shows_in_the_phase_and_the_model_in_the_status(kube, operator, redis_client):
    ns, name = kube.namespace(), "final"
    create(kube, ns, name, final_spec())
    assert condition(kube.status(ns, name), "SpecValid")["status"] == "True"
    counts = {"total": 24, "succeeded": 24}
    write_summary(redis_client, ns, name, trials=counts, bestReward=0.93, bestTrial="t-0011",
                  bestGenotype=GENOTYPE, updated="2026-01-01T00:00:00Z")
    wait_for("Searching", lambda: kube.status(ns, name).get("phase") == "Searching")

    # The search is done, its best are trained again: by the same trainers, which stay.
    write_summary(redis_client, ns, name, trials=counts, bestReward=0.93, bestTrial="t-0011",
                  bestGenotype=GENOTYPE, stage="finalTraining", finalTrials={"total": 2, "running": 2},
                  updated="2026-01-01T00:05:00Z")
    status = wait_for("FinalTraining", lambda: (lambda s: s if s.get("phase") == "FinalTraining" else None)(
        kube.status(ns, name)))
    assert status["finalTrials"]["running"] == 2 and "completionTime" not in status
    assert trainer_replicas(kube, ns, name) == 2

    model = {"trial": "final-1a2b3c4d", "sourceTrial": "t-0011", "genotypeHash": "1a2b3c4d5e6f",
             "path": f"/var/lib/kubenas/artifacts/final/{name}/model", "validationAccuracy": 0.95,
             "testAccuracy": 0.9425, "testImages": 360, "parameters": 31234, "candidates": 2}
    write_summary(redis_client, ns, name, trials=counts, bestReward=0.93, bestTrial="t-0011",
                  bestGenotype=GENOTYPE, stage="finalTraining", finalTrials={"total": 2, "succeeded": 2},
                  finalModel=model, finished=True, finishReason="MaxTrialsReached", updated="2026-01-01T00:20:00Z")
    status = wait_for("Succeeded", lambda: (lambda s: s if s.get("phase") == "Succeeded" else None)(
        kube.status(ns, name)))
    assert status["finalModel"] == model  # every field declared in the schema: none pruned
    assert status["completionTime"] and condition(status, "Complete")["status"] == "True"
    wait_for("the trainers gone once the model is there", lambda: trainer_replicas(kube, ns, name) in (0, None))


def test_a_final_stage_that_made_no_model_fails_the_search(kube, operator, redis_client):
    ns, name = kube.namespace(), "final-broken"
    create(kube, ns, name, final_spec())
    write_summary(redis_client, ns, name, trials={"total": 24, "succeeded": 24}, stage="finalTraining",
                  finalTrials={"total": 2, "failed": 2}, finalError="every final trial failed: out of memory",
                  finished=True, finishReason="MaxTrialsReached", updated="2026-01-01T00:20:00Z")
    status = wait_for("Failed", lambda: (lambda s: s if s.get("phase") == "Failed" else None)(kube.status(ns, name)))
    failed = condition(status, "Failed")
    assert failed["reason"] == "FinalTrainingFailed" and "every final trial failed: out of memory" in failed["message"]
    assert "finalModel" not in status


def test_a_final_stage_without_the_artifact_store_is_refused_naming_the_field(kube, operator):
    ns, name = kube.namespace(), "final-novolume"
    kube.create_search(search_body(name, ns, final_spec(artifacts={"enabled": False})))
    status = wait_for("SpecValid False", lambda: (lambda s: s if condition(s, "SpecValid").get("status") == "False"
                                                  else None)(kube.status(ns, name)))
    message = condition(status, "SpecValid")["message"]
    assert "spec.artifacts.enabled: must be true with spec.final" in message
    assert status["phase"] == "Failed"
    assert trainer_replicas(kube, ns, name) in (0, None)  # nothing trains a search that cannot keep its model
