"""The operator (KopfRunner, as its own ServiceAccount) against a real API server with
the real controllers, and a real Redis carrying the controller's summary."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
import yaml

from kubenas.manifest import parse_manifest

from tests.operator.support import (
    CONTROLLER_IMAGE, OPERATOR_NAMESPACE, ROOT, TRAINER_IMAGE, b64, run_redis, search_body, wait_for, write_summary,
)

pytestmark = pytest.mark.kube

OWNER_KEYS = ("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")


def names(name: str) -> dict[str, str]:
    return {c: f"kubenas-{name}-{c}" for c in ("redis", "spec", "controller", "trainer")}


def children(kube, ns: str, name: str) -> dict[str, dict | None]:
    n = names(name)
    return {
        "secret": kube.maybe(kube.core.read_namespaced_secret, n["redis"], ns),
        "service": kube.maybe(kube.core.read_namespaced_service, n["redis"], ns),
        "redis": kube.maybe(kube.apps.read_namespaced_deployment, n["redis"], ns),
        "netpol": kube.maybe(kube.net.read_namespaced_network_policy, n["redis"], ns),
        "configmap": kube.maybe(kube.core.read_namespaced_config_map, n["spec"], ns),
        "job": kube.maybe(kube.batch.read_namespaced_job, n["controller"], ns),
        "trainer": kube.maybe(kube.apps.read_namespaced_deployment, n["trainer"], ns),
    }


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def reasons(kube, ns: str, name: str) -> list[str]:
    return [e["reason"] for e in kube.events(ns, name)]


def create(kube, ns: str, name: str, spec: dict | None = None) -> dict:
    body = kube.create_search(search_body(name, ns, spec))
    wait_for(f"{name} reconciled", lambda: condition(kube.status(ns, name), "SpecValid"))
    return body


def trainer_replicas(kube, ns: str, name: str):
    deployment = children(kube, ns, name)["trainer"]
    return None if deployment is None else deployment["spec"]["replicas"]


def test_a_gpu_search_gets_its_objects(kube, operator, cluster):
    ns = kube.namespace()
    # the example's prerequisite (its dataset PVC need not exist for pods to be created)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "kubenas-batch"}, "value": 1000}))
    body = yaml.safe_load((ROOT / "examples" / "search-gpu.yaml").read_text())
    body["metadata"]["namespace"] = ns
    name = body["metadata"]["name"]
    created = kube.create_search(body)
    uid = created["metadata"]["uid"]

    objs = wait_for("every child object", lambda: (lambda c: c if all(c.values()) else None)(
        children(kube, ns, name)))
    for key, obj in objs.items():
        owners = obj["metadata"]["ownerReferences"]
        assert [{k: o[k] for k in OWNER_KEYS} for o in owners] == [{
            "apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch", "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}], key
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == name
    pvc = kube.json(kube.core.read_namespaced_persistent_volume_claim, f"kubenas-{name}-redis", ns)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    # persistence also keeps the controller's checkpoint on a claim of its own
    kube.json(kube.core.read_namespaced_persistent_volume_claim, f"kubenas-{name}-controller", ns)
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": f"kubenas-{name}-controller"}} in \
        objs["job"]["spec"]["template"]["spec"]["volumes"]

    # the trainers: GPUs, scheduling, image, data volume, the Redis URL from the Secret
    trainer = objs["trainer"]
    assert trainer["spec"]["replicas"] == 8
    pod = trainer["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/kubenas/trainer:0.1.0"
    assert container["resources"]["limits"] == {"memory": "32Gi", "nvidia.com/gpu": "1"}
    assert container["resources"]["requests"] == {"cpu": "6", "memory": "24Gi"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["priorityClassName"] == "kubenas-batch"
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 50
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "cifar10-dataset" for v in pod["volumes"])
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBENAS_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": f"kubenas-{name}-redis", "key": "url"}
    assert container["args"] == ["--namespace", ns, "--name", name]
    password = b64decode(objs["secret"]["data"]["password"])
    assert len(password) == 64
    for key in ("trainer", "job", "configmap", "redis", "service", "netpol"):
        assert password not in json.dumps(objs[key]), f"the password leaked into the {key}"

    # the real ReplicaSet controller made trainer pods of it (no kubelet: they stay Pending)
    selector = kube.status(ns, name)["selector"]
    pods = wait_for("8 trainer pods", lambda: (lambda items: items if len(items) == 8 else None)(
        kube.json(kube.core.list_namespaced_pod, ns, label_selector=selector)["items"]))
    assert all(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" for p in pods)
    assert all(p["spec"]["priority"] == 1000 for p in pods)

    # the controller: the manifest's image, the spec from the ConfigMap
    job_pod = objs["job"]["spec"]["template"]["spec"]
    assert job_pod["containers"][0]["image"] == "ghcr.io/kubenas/controller:0.1.0"
    assert job_pod["containers"][0]["command"] == ["python", "-m", "kubenas_controller"]
    document = yaml.safe_load(objs["configmap"]["data"]["search.yaml"])
    assert parse_manifest(document).spec == parse_manifest({**body, "spec": created["spec"]}).spec

    # Redis: its config from the Secret, reachable only by this search's pods and the operator
    conf = b64decode(objs["secret"]["data"]["redis.conf"])
    assert f"requirepass {password}" in conf and "appendonly yes" in conf
    peers = objs["netpol"]["spec"]["ingress"][0]["from"]
    assert peers[0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kubenas",
                                                      "app.kubernetes.io/instance": name}
    assert peers[1]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}

    # no API access for the search's pods: no ServiceAccount, no Role
    assert [s["metadata"]["name"] for s in kube.json(kube.core.list_namespaced_service_account, ns)["items"]] == ["default"]
    assert kube.json(kube.rbac.list_namespaced_role, ns)["items"] == []

    status = kube.status(ns, name)
    assert status["phase"] == "Pending" and status["observedGeneration"] == 1
    assert condition(status, "SpecValid")["status"] == "True" and status["startTime"]
    assert "kopf" not in status  # kopf's progress is in annotations, not in (pruned) status
    annotations = kube.search(ns, name)["metadata"]["annotations"]
    assert "kubenas.io/last-handled-configuration" in annotations
    assert "Created" in wait_for("a Created event", lambda: reasons(kube, ns, name))


def b64decode(text: str) -> str:
    import base64

    return base64.b64decode(text).decode()


def test_default_images_come_from_the_operator(kube, operator):
    ns = kube.namespace()
    create(kube, ns, "plain")
    objs = wait_for("children", lambda: (lambda c: c if c["trainer"] and c["job"] else None)(children(kube, ns, "plain")))
    assert objs["trainer"]["spec"]["template"]["spec"]["containers"][0]["image"] == TRAINER_IMAGE
    assert objs["job"]["spec"]["template"]["spec"]["containers"][0]["image"] == CONTROLLER_IMAGE
    assert "resources" not in objs["trainer"]["spec"]["template"]["spec"]["containers"][0] or \
        "nvidia.com/gpu" not in objs["trainer"]["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})


def test_status_follows_the_controllers_summary(kube, operator, redis_client, cluster):
    ns, name = kube.namespace(), "follow"
    create(kube, ns, name)
    wait_for("NoSummaryYet", lambda: condition(kube.status(ns, name), "RedisReachable").get("reason") == "NoSummaryYet")
    assert kube.status(ns, name)["phase"] == "Pending"

    genotype = {"space": "nasbench201", "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+"
                                                "|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"}
    write_summary(redis_client, ns, name, trials={"total": 3, "running": 2, "succeeded": 1}, bestReward=0.81,
                  bestTrial="t-0001", bestGenotype=genotype, updated="2026-01-01T00:00:00Z")
    status = wait_for("Searching", lambda: (lambda s: s if s.get("phase") == "Searching" else None)(kube.status(ns, name)))
    assert status["trials"]["total"] == 3 and status["trials"]["running"] == 2
    assert status["bestReward"] == 0.81 and status["bestTrial"] == "t-0001" and status["bestGenotype"] == genotype
    assert condition(status, "RedisReachable")["reason"] == "SummaryRead"

    # an unchanged summary costs no write: the object's resourceVersion holds over several polls
    version = kube.search(ns, name)["metadata"]["resourceVersion"]
    time.sleep(3.5)
    assert kube.search(ns, name)["metadata"]["resourceVersion"] == version

    table = cluster.kubectl("get", "archsearch", name, "-n", ns).stdout
    header, row = table.splitlines()
    assert header.split() == ["NAME", "PHASE", "TRIALS", "BEST", "AGE"]
    assert row.split()[:4] == [name, "Searching", "3", "0.81"]

    write_summary(redis_client, ns, name, trials={"total": 24, "succeeded": 23, "failed": 1}, bestReward=0.93,
                  bestTrial="t-0017", bestGenotype=genotype, finished=True, finishReason="MaxTrialsReached",
                  updated="2026-01-01T01:00:00Z")
    status = wait_for("Succeeded", lambda: (lambda s: s if s.get("phase") == "Succeeded" else None)(kube.status(ns, name)))
    assert status["completionTime"] and status["finishReason"] == "MaxTrialsReached"
    assert condition(status, "Complete")["reason"] == "MaxTrialsReached"
    assert status["bestReward"] == 0.93
    wait_for("trainers removed", lambda: children(kube, ns, name)["trainer"] is None)
    left = children(kube, ns, name)
    assert left["job"] and left["redis"] and left["secret"], "the controller's Job and Redis stay for the results"
    events = wait_for("a Succeeded event", lambda: [e for e in kube.events(ns, name) if e["reason"] == "Succeeded"])
    assert "0.93" in events[0]["message"] and "Searching" in reasons(kube, ns, name)

    # a finished search stays finished: a spec change brings no trainers back
    kube.patch_search(ns, name, {"spec": {"budget": {"maxTrials": 100}}})
    time.sleep(2.5)
    assert children(kube, ns, name)["trainer"] is None and kube.status(ns, name)["phase"] == "Succeeded"


def test_failures_end_in_failed_with_a_reason(kube, operator, redis_client):
    ns = kube.namespace()
    create(kube, ns, "too-many")
    write_summary(redis_client, ns, "too-many", trials={"total": 12, "failed": 11}, finished=True,
                  finishReason="TooManyFailedTrials")
    status = wait_for("Failed", lambda: (lambda s: s if s.get("phase") == "Failed" else None)(kube.status(ns, "too-many")))
    assert condition(status, "Failed")["reason"] == "TooManyFailedTrials"
    warnings = wait_for("a Failed warning", lambda: [e for e in kube.events(ns, "too-many") if e["reason"] == "Failed"])
    assert warnings[0]["type"] == "Warning"

    # the controller Job itself fails (the real Job controller decides: deadline exceeded)
    create(kube, ns, "crashed")
    job = f"kubenas-crashed-controller"
    wait_for("the controller Job", lambda: kube.maybe(kube.batch.read_namespaced_job, job, ns))
    kube.batch.patch_namespaced_job(job, ns, {"spec": {"activeDeadlineSeconds": 1}})
    status = wait_for("Failed", lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
        kube.status(ns, "crashed")), timeout=60)
    assert status["finishReason"] == "ControllerFailed"
    assert "DeadlineExceeded" in condition(status, "Failed")["message"]
    wait_for("trainers removed", lambda: children(kube, ns, "crashed")["trainer"] is None)


def test_kubectl_scale_and_ready_trainers(kube, operator, cluster):
    ns, name = kube.namespace(), "scaled"
    create(kube, ns, name)
    wait_for("2 trainers", lambda: trainer_replicas(kube, ns, name) == 2)
    cluster.kubectl("scale", f"archsearch/{name}", "-n", ns, "--replicas=5")
    assert kube.search(ns, name)["spec"]["budget"]["parallelism"] == 5
    wait_for("5 trainers", lambda: trainer_replicas(kube, ns, name) == 5)
    assert "Scaled" in wait_for("a Scaled event", lambda: reasons(kube, ns, name))

    # two trainer pods become Ready (as a kubelet would say): ReplicaSet -> Deployment -> status.replicas
    selector = kube.status(ns, name)["selector"]
    pods = wait_for("5 pods", lambda: (lambda p: p if len(p) == 5 else None)(
        kube.json(kube.core.list_namespaced_pod, ns, label_selector=selector)["items"]))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for pod in pods[:2]:
        kube.core.patch_namespaced_pod_status(pod["metadata"]["name"], ns, {"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now},
                           {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}})
    wait_for("status.replicas 2", lambda: kube.status(ns, name).get("replicas") == 2, timeout=45)
    scale = json.loads(cluster.kubectl("get", "archsearch", name, "-n", ns, "--subresource=scale", "-o", "json").stdout)
    assert scale["spec"]["replicas"] == 5 and scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == selector


def test_suspend_and_resume_keep_progress(kube, operator, redis_client):
    ns, name = kube.namespace(), "pause"
    create(kube, ns, name)
    write_summary(redis_client, ns, name, trials={"total": 4, "succeeded": 4}, bestReward=0.7, updated="u1")
    wait_for("Searching", lambda: kube.status(ns, name).get("phase") == "Searching")
    before = children(kube, ns, name)

    kube.patch_search(ns, name, {"spec": {"suspend": True}})
    wait_for("no trainers", lambda: trainer_replicas(kube, ns, name) == 0)
    status = wait_for("Suspended", lambda: (lambda s: s if s.get("phase") == "Suspended" else None)(kube.status(ns, name)))
    assert condition(status, "Suspended")["status"] == "True"
    assert status["trials"]["total"] == 4 and status["bestReward"] == 0.7
    config = yaml.safe_load(children(kube, ns, name)["configmap"]["data"]["search.yaml"])
    assert config["spec"]["suspend"] is True

    kube.patch_search(ns, name, {"spec": {"suspend": False}})
    wait_for("2 trainers", lambda: trainer_replicas(kube, ns, name) == 2)
    wait_for("Searching", lambda: kube.status(ns, name).get("phase") == "Searching")
    after = children(kube, ns, name)
    # the controller was never replaced, the Redis and its password never rewritten
    for key in ("job", "secret", "redis"):
        assert after[key]["metadata"]["uid"] == before[key]["metadata"]["uid"], key
    assert after["secret"]["metadata"]["resourceVersion"] == before["secret"]["metadata"]["resourceVersion"]
    got = wait_for("Suspended and Resumed events", lambda: (lambda r: r if "Resumed" in r else None)(reasons(kube, ns, name)))
    assert "Suspended" in got


def test_budget_and_controller_changes(kube, operator):
    ns, name = kube.namespace(), "budget"
    create(kube, ns, name)
    job = wait_for("the Job", lambda: children(kube, ns, name)["job"])
    kube.patch_search(ns, name, {"spec": {"budget": {"maxTrials": 50, "maxDuration": "2h"}}})

    def budget():
        config = yaml.safe_load(children(kube, ns, name)["configmap"]["data"]["search.yaml"])
        return config["spec"]["budget"] if config["spec"]["budget"]["maxTrials"] == 50 else None

    assert wait_for("the new budget in the controller's spec", budget)["maxDuration"] == "2h"
    assert children(kube, ns, name)["job"]["metadata"]["uid"] == job["metadata"]["uid"]
    assert "BudgetChanged" in wait_for("a BudgetChanged event", lambda: reasons(kube, ns, name))

    # a Job's pod template is immutable: a new controller image replaces the Job
    kube.patch_search(ns, name, {"spec": {"controller": {"image": "registry.example.com/kubenas/controller:v2"}}})
    replaced = wait_for("a new Job", lambda: (lambda j: j if j and j["metadata"]["uid"] != job["metadata"]["uid"] else None)(
        children(kube, ns, name)["job"]))
    assert replaced["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/kubenas/controller:v2"
    assert kube.status(ns, name)["observedGeneration"] == kube.search(ns, name)["metadata"]["generation"]


def test_a_spec_that_makes_no_sense_is_a_condition_not_a_crash_loop(kube, operator):
    ns = kube.namespace()
    # the schema bounds maxParameters; only the operator knows no network of this search fits under it
    # (an operation of another space, or a parameter of the wrong type, are refused at admission:
    # tests/operator/test_schema.py)
    kube.create_search(search_body("nonsense", ns, {"searchSpace": {"type": "nasnet"}, "training": {"channels": 16},
                                                    "objective": {"constraints": {"maxParameters": 5000}}}))
    status = wait_for("Failed", lambda: (lambda s: s if s.get("phase") == "Failed" else None)(kube.status(ns, "nonsense")))
    valid = condition(status, "SpecValid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert "5000" in valid["message"] and "objective.constraints.maxParameters" in valid["message"]
    assert status["finishReason"] == "InvalidSpec"
    # nothing created, one Warning, no retries, no status churn
    version = kube.search(ns, "nonsense")["metadata"]["resourceVersion"]
    time.sleep(4)
    assert all(v is None for v in children(kube, ns, "nonsense").values())
    assert kube.search(ns, "nonsense")["metadata"]["resourceVersion"] == version
    warnings = [e for e in kube.events(ns, "nonsense") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["InvalidSpec"] and warnings[0].get("count", 1) == 1

    # pod settings the API server refuses: a condition naming the object; fixing the spec recovers
    kube.create_search(search_body("novolume", ns, {"trainer": {
        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}}))  # a mount of no volume
    status = wait_for("Rejected", lambda: (lambda s: s if condition(s, "SpecValid").get("reason") == "Rejected" else None)(
        kube.status(ns, "novolume")))
    assert status["phase"] == "Failed" and "kubenas-novolume-trainer" in condition(status, "SpecValid")["message"]
    kube.patch_search(ns, "novolume", {"spec": {"trainer": {"volumes": [{"name": "data", "emptyDir": {}}]}}})
    assert "volumeMounts" in condition(status, "SpecValid")["message"]
    status = wait_for("recovered", lambda: (lambda s: s if s.get("phase") == "Pending" else None)(kube.status(ns, "novolume")))
    assert condition(status, "SpecValid")["status"] == "True" and condition(status, "Failed") == {}
    assert "finishReason" not in status
    assert trainer_replicas(kube, ns, "novolume") == 2


def test_external_redis_needs_a_grant_for_its_secret(kube, operator, cluster, tmp_path):
    import redis

    ns, name = kube.namespace(), "external"
    with run_redis(tmp_path / "redis", password="s3cret-for-the-test") as url:
        kube.core.create_namespaced_secret(ns, {"metadata": {"name": "team-redis"}, "data": {"url": b64(url)}})
        create(kube, ns, name, {**search_body(name, ns)["spec"],
                                "redis": {"mode": "external", "urlSecret": {"name": "team-redis"}}})
        objs = wait_for("trainers", lambda: (lambda c: c if c["trainer"] else None)(children(kube, ns, name)))
        assert objs["secret"] is None and objs["redis"] is None and objs["netpol"] is None
        env = {e["name"]: e for e in objs["trainer"]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["KUBENAS_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "team-redis", "key": "url"}

        # the operator may not read the Secret until its owner says so, and says how
        redis_cond = wait_for("SecretForbidden", lambda: (lambda c: c if c.get("reason") == "SecretForbidden" else None)(
            condition(kube.status(ns, name), "RedisReachable")))
        commands = redis_cond["message"].split("grant it with: ", 1)[1].split(" && ")
        for command in commands:
            cluster.kubectl(*command.split()[1:])
        client = redis.Redis.from_url(url, decode_responses=True)
        write_summary(client, ns, name, trials={"total": 2, "running": 2}, updated="u")
        status = wait_for("Searching", lambda: (lambda s: s if s.get("phase") == "Searching" else None)(kube.status(ns, name)))
        assert condition(status, "RedisReachable")["status"] == "True" and status["trials"]["total"] == 2
        client.close()
        assert "s3cret" not in json.dumps(kube.search(ns, name))


def test_deleting_a_search_deletes_its_objects(kube, operator, crd):
    # The garbage collector learns about a new CRD at its next discovery (every 30 s),
    # as in any cluster: owners it cannot map yet are retried with a growing backoff.
    time.sleep(max(0.0, crd["established_at"] + 40 - time.monotonic()))
    ns, name = kube.namespace(), "gone"
    create(kube, ns, name)
    wait_for("children", lambda: all(children(kube, ns, name).values()))
    kube.custom.delete_namespaced_custom_object("kubenas.io", "v1alpha1", ns, "architecturesearches", name)
    # the real garbage collector follows the ownerReferences
    wait_for("every child gone", lambda: not any(children(kube, ns, name).values()), timeout=60)


def test_liveness_and_a_watch_that_was_closed(kube, operator, liveness_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{liveness_port}/healthz", timeout=5) as response:
        assert response.status == 200
        assert "searches" in json.loads(response.read())
    # The API server ends each watch after 20 s in these tests; past that, new objects
    # are still seen (the operator re-opened its watches).
    ns = kube.namespace()
    time.sleep(max(0.0, 25 - (time.monotonic() - operator.started)))
    create(kube, ns, "late")
    wait_for("children", lambda: children(kube, ns, "late")["trainer"])
