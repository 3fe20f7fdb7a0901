"""One-shot searches in the operator's pure parts: the supernet's Indexed Job and headless
Service, the trainers giving way to the workers, the phases, a spec the cluster cannot run.

No API server here; tests/operator/test_oneshot.py sends the same objects to a real one.
"""

from __future__ import annotations

import json

import pytest

from kubenas.errors import InvalidSpec
from kubenas.manifest import parse_manifest
from kubenas.spec import ArchitectureSearch, ArchitectureSearchSpec, SearchSummary
from kubenas_operator import builders as b
from kubenas_operator import status as st
from kubenas_operator.validation import read_spec

REF = b.SearchRef(name="enas", namespace="research", uid="0b5e0f5e-1111-2222-3333-444455556666")
IMAGES = b.Images(controller="example.com/kubenas/controller:1", trainer="example.com/kubenas/trainer:1")


def manifest(**spec) -> ArchitectureSearch:
    base = {"strategy": {"algorithm": "enas"}, "oneShot": {"workers": 4, "maxRestarts": 2},
            "budget": {"parallelism": 4}, "artifacts": {"enabled": True}}
    return parse_manifest({"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
                           "metadata": {"name": REF.name, "namespace": REF.namespace}, "spec": {**base, **spec}})


def test_the_workers_are_an_indexed_job_reaching_rank_0_through_the_headless_service():
    m = manifest(trainer={"gpus": 1, "env": [{"name": "MASTER_ADDR", "value": "not-this"}]})
    job, service = b.build_supernet_job_spec(REF, m, IMAGES), b.build_supernet_service_spec(REF)
    assert job["metadata"]["name"] == service["metadata"]["name"] == "kubenas-enas-supernet"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimit"] == 4 * 2  # a group restart may cost every worker's pod
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and pod["restartPolicy"] == "Never"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    # The user's env cannot move the rendezvous; the rank comes from the Job (JOB_COMPLETION_INDEX).
    assert env["MASTER_ADDR"] == "kubenas-enas-supernet-0.kubenas-enas-supernet" and env["WORLD_SIZE"] == "4"
    assert "RANK" not in env
    assert container["args"][-2:] == ["--device", "cuda"] and container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert container["image"] == IMAGES.trainer
    assert {"name": "artifacts", "mountPath": b.ARTIFACTS_DIR} in container["volumeMounts"]
    assert pod["securityContext"]["fsGroup"] == b.IMAGE_GID
    assert job["metadata"]["ownerReferences"][0]["uid"] == REF.uid


def test_the_workers_read_the_spec_as_json_from_the_configmap_and_only_one_shot_gets_it():
    data = b.build_spec_configmap_spec(REF, manifest())["data"]
    assert ArchitectureSearchSpec.model_validate(json.loads(data[b.SUPERNET_SPEC_KEY])) == manifest().spec
    plain = manifest(strategy={"algorithm": "random"}, oneShot={})
    assert b.SUPERNET_SPEC_KEY not in b.build_spec_configmap_spec(REF, plain)["data"]
    assert not b.is_one_shot(plain) and b.is_one_shot(manifest())


def test_the_trainers_give_way_to_the_workers_while_the_supernet_trains():
    m = manifest()
    assert b.trainer_replicas(m, finished=False, supernet_training=True) == 0
    assert b.trainer_replicas(m, finished=False) == 4


@pytest.mark.parametrize("stage, phase", [("supernet", "Supernet"), ("deriving", "Deriving"),
                                          ("searching", "Searching")])
def test_the_summarys_stage_is_the_phase(stage, phase):
    obs = st.Observation(now="2026-01-01T00:00:00Z", generation=1, suspended=False, selector="s",
                         summary=SearchSummary(stage=stage, updated="2026-01-01T00:00:00Z"))
    assert st.compute_status({}, obs)["phase"] == phase


def test_a_worker_job_that_failed_for_good_fails_the_search_with_its_reason():
    obs = st.Observation(now="2026-01-01T00:00:00Z", generation=1, suspended=False, selector="s",
                         summary=SearchSummary(stage="supernet"),
                         supernet_failure="the supernet's worker Job failed: BackoffLimitExceeded")
    status = st.compute_status({}, obs)
    assert status["phase"] == "Failed" and status["finishReason"] == "SupernetFailed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "SupernetFailed" and "BackoffLimitExceeded" in failed["message"]


def test_one_shot_in_a_cluster_needs_the_artifact_store():
    body = {"metadata": {"name": "enas", "namespace": "research"},
            "spec": {"strategy": {"algorithm": "darts"}, "budget": {"parallelism": 2}}}
    with pytest.raises(InvalidSpec, match="spec.artifacts.enabled: must be true for strategy.algorithm darts"):
        read_spec(body)
    body["spec"]["artifacts"] = {"enabled": True}
    assert read_spec(body).spec.strategy.algorithm == "darts"
