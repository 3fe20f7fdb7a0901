"""One-shot searches (enas, darts, spos) on a real API server with the real Job controller:
the supernet's worker group as an Indexed Job with a headless Service for the rendezvous,
the Supernet phase from the controller's summary, and a worker Job that fails for good."""

from __future__ import annotations

import pytest

from tests.operator.support import search_body, wait_for, write_summary
from tests.operator.test_reconcile import OWNER_KEYS, condition, create, reasons, trainer_replicas

pytestmark = pytest.mark.kube


def enas_spec(**overrides) -> dict:
    spec = {
        "searchSpace": {"type": "nasbench201"},
        "strategy": {"algorithm": "enas", "parameters": {"topK": 2}},
        "oneShot": {"workers": 2, "maxRestarts": 2},
        "budget": {"maxTrials": 10, "parallelism": 2},
        "training": {"epochs": 2, "cellsPerStage": 1, "channels": 8},
        "trainer": {"env": [{"name": "KUBENAS_ONESHOT_TIMEOUT", "value": "30"}]},
        "artifacts": {"enabled": True},
    }
    spec.update(overrides)
    return spec


def test_a_one_shot_search_gets_an_indexed_job_and_a_headless_service(kube, operator):
    ns, name = kube.namespace(), "enas"
    body = create(kube, ns, name, enas_spec())
    job_name = svc_name = f"kubenas-{name}-supernet"
    job = wait_for("the supernet Job", lambda: kube.maybe(kube.batch.read_namespaced_job, job_name, ns))
    service = kube.maybe(kube.core.read_namespaced_service, svc_name, ns)
    assert service is not None
    for obj in (job, service):  # owned by the search: deleted with it
        assert [{k: o[k] for k in OWNER_KEYS} for o in obj["metadata"]["ownerReferences"]] == [{
            "apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch", "name": name,
            "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]

    # The Service: headless, selecting the workers, publishing them before they are ready.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"][0]["port"] == 29500
    # The Job: one pod per rank, indexed; a group restart's pod failures fit in the backoff limit.
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    assert spec["backoffLimit"] == 2 * 2
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]  # bad input fails the Job at once
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    assert pod["subdomain"] == svc_name and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "kubenas.oneshot"]
    assert container["args"] == ["--spec", "/etc/kubenas/spec.json", "--artifacts", "/var/lib/kubenas/artifacts",
                                 "--device", "cpu"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MASTER_ADDR"] == f"{job_name}-0.{svc_name}" and env["MASTER_PORT"] == "29500"
    assert env["WORLD_SIZE"] == "2" and env["KUBENAS_ONESHOT_TIMEOUT"] == "30"
    claim = f"kubenas-{name}-artifacts"
    assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": claim}} in pod["volumes"]
    assert {"name": "artifacts", "mountPath": "/var/lib/kubenas/artifacts"} in container["volumeMounts"]
    # The workers train in the trainers' place (their pod settings, their GPUs): no trainers meanwhile.
    assert trainer_replicas(kube, ns, name) == 0
    configmap = kube.json(kube.core.read_namespaced_config_map, f"kubenas-{name}-spec", ns)
    assert '"algorithm":"enas"' in configmap["data"]["spec.json"]

    # The real Job controller makes the pods: host <job>-<index> under the Service's subdomain, and
    # each its rank as JOB_COMPLETION_INDEX (what the worker reads when RANK is not set).
    selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())
    pods = wait_for("two worker pods", lambda: (lambda items: items if len(items) == 2 else None)(
        kube.json(kube.core.list_namespaced_pod, ns, label_selector=selector)["items"]))
    assert sorted(p["spec"]["hostname"] for p in pods) == [f"{job_name}-0", f"{job_name}-1"]
    assert all(p["spec"]["subdomain"] == svc_name for p in pods)
    for p in pods:
        index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        assert p["spec"]["hostname"] == f"{job_name}-{index}"
        index_env = next(e for e in p["spec"]["containers"][0]["env"] if e["name"] == "JOB_COMPLETION_INDEX")
        assert "job-completion-index" in index_env["valueFrom"]["fieldRef"]["fieldPath"]

    # spec.suspend reaches the Job (the Job controller stops the workers; they resume from the checkpoint).
    def job_suspended():
        return kube.json(kube.batch.read_namespaced_job, job_name, ns)["spec"].get("suspend")

    kube.patch_search(ns, name, {"spec": {"suspend": True}})
    wait_for("the worker Job suspended", lambda: job_suspended() is True)
    kube.patch_search(ns, name, {"spec": {"suspend": False}})
    wait_for("the worker Job resumed", lambda: job_suspended() is False)


def test_the_supernet_stage_shows_as_a_phase_and_a_failed_worker_job_fails_the_search(kube, operator, redis_client,
                                                                                     cluster):
    ns, name = kube.namespace(), "enas-phases"
    create(kube, ns, name, enas_spec())
    write_summary(redis_client, ns, name, stage="supernet", updated="2026-01-01T00:00:00Z")
    wait_for("Supernet", lambda: kube.status(ns, name).get("phase") == "Supernet")
    row = cluster.kubectl("get", "archsearch", name, "-n", ns).stdout.splitlines()[1]
    assert row.split()[1] == "Supernet"
    wait_for("a Supernet event", lambda: "Supernet" in reasons(kube, ns, name))
    write_summary(redis_client, ns, name, stage="deriving", updated="2026-01-01T00:01:00Z")
    wait_for("Deriving", lambda: kube.status(ns, name).get("phase") == "Deriving")

    # The worker group fails for good (the real Job controller decides: its deadline passes).
    job = f"kubenas-{name}-supernet"
    kube.batch.patch_namespaced_job(job, ns, {"spec": {"activeDeadlineSeconds": 1}})
    status = wait_for("Failed", lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
        kube.status(ns, name)), timeout=60)
    assert status["finishReason"] == "SupernetFailed"
    assert "the supernet's worker Job failed: DeadlineExceeded" in condition(status, "Failed")["message"]
    # Nothing will reach the controller any more: its Job goes, like the trainers.
    wait_for("the controller Job removed", lambda: kube.maybe(
        kube.batch.read_namespaced_job, f"kubenas-{name}-controller", ns) is None)


def test_one_shot_without_the_artifact_store_is_refused_naming_the_field(kube, operator):
    ns, name = kube.namespace(), "enas-novolume"
    kube.create_search(search_body(name, ns, enas_spec(artifacts={"enabled": False})))
    status = wait_for("SpecValid False", lambda: (lambda s: s if condition(s, "SpecValid").get("status") == "False"
                                                  else None)(kube.status(ns, name)))
    assert "spec.artifacts.enabled: must be true for strategy.algorithm enas" in condition(status, "SpecValid")["message"]
    assert kube.maybe(kube.batch.read_namespaced_job, f"kubenas-{name}-supernet", ns) is None


def test_more_workers_than_trainers_is_refused_at_admission(kube, operator):
    ns = kube.namespace()
    with pytest.raises(Exception) as refused:
        kube.create_search(search_body("enas-wide", ns, enas_spec(oneShot={"workers": 3})))
    assert "oneShot.workers: must be at most budget.parallelism" in str(refused.value)


@pytest.mark.parametrize("example", ["enas-digits.yaml", "darts-digits.yaml"])
def test_the_one_shot_examples_apply_to_a_cluster_unchanged(kube, operator, example):
    import yaml

    from tests.operator.support import ROOT

    ns = kube.namespace()
    body = yaml.safe_load((ROOT / "examples" / example).read_text())
    body["metadata"]["namespace"] = ns
    name = body["metadata"]["name"]
    kube.create_search(body)
    status = wait_for("SpecValid", lambda: (lambda s: s if condition(s, "SpecValid") else None)(kube.status(ns, name)))
    assert condition(status, "SpecValid")["status"] == "True", status
    job = wait_for("the supernet Job", lambda: kube.maybe(kube.batch.read_namespaced_job, f"kubenas-{name}-supernet", ns))
    assert job["spec"]["completions"] == 2
