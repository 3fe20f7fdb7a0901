"""The operator's pure parts: builders (objects as dicts), status computation, settings.

No API server here; tests/operator runs the same objects against a real one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubenas.errors import InvalidSpec
from kubenas.manifest import load_manifest, parse_manifest
from kubenas.spec import ArchitectureSearch, SearchSummary
from kubenas_operator import builders as b
from kubenas_operator import status as st
from kubenas_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
REF = b.SearchRef(name="cifar10-nasnet", namespace="research", uid="0b5e0f5e-1111-2222-3333-444455556666", generation=3)
IMAGES = b.Images(controller="example.com/kubenas/controller:1", trainer="example.com/kubenas/trainer:1")
KEY = b"k" * 32


def gpu_manifest() -> ArchitectureSearch:
    return load_manifest(ROOT / "examples" / "search-gpu.yaml")


def manifest(**spec) -> ArchitectureSearch:
    return parse_manifest({"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
                           "metadata": {"name": REF.name, "namespace": REF.namespace}, "spec": spec})


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container["env"]}


def all_objects(m: ArchitectureSearch) -> list[dict]:
    password = b.derive_redis_password(KEY, REF.namespace, REF.name)
    return [
        b.build_redis_secret_spec(REF, m, password),
        *b.build_managed_redis_objects(REF, m, "kubenas-system", {"app.kubernetes.io/name": "kubenas-operator"}),
        b.build_checkpoint_pvc_spec(REF, m),
        b.build_spec_configmap_spec(REF, m),
        b.build_controller_job_spec(REF, m, IMAGES),
        b.build_trainer_deployment_spec(REF, m, IMAGES, b.trainer_replicas(m, finished=False)),
    ]


def test_operator_imports_without_torch():
    code = (
        "import sys\n"
        "import kubenas_operator, kubenas_operator.builders, kubenas_operator.status\n"
        "import kubenas_operator.settings, kubenas_operator.kube, kubenas_operator.handlers\n"
        "import kubenas_operator.__main__\n"
        "heavy = [m for m in ('torch', 'torchvision', 'optuna', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_object_is_named_labelled_and_owned():
    objects = all_objects(gpu_manifest())
    kinds = [o["kind"] for o in objects]
    assert kinds == ["Secret", "PersistentVolumeClaim", "Service", "Deployment", "NetworkPolicy",
                     "PersistentVolumeClaim", "ConfigMap", "Job", "Deployment"]
    assert "ServiceAccount" not in kinds and "Role" not in kinds
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert len(names) == len(objects)
    for obj in objects:
        meta = obj["metadata"]
        assert meta["namespace"] == REF.namespace
        assert meta["name"].startswith(f"kubenas-{REF.name}-") and len(meta["name"]) <= 63
        assert meta["labels"]["app.kubernetes.io/instance"] == REF.name
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubenas-operator"
        assert meta["ownerReferences"] == [{
            "apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch", "name": REF.name,
            "uid": REF.uid, "controller": True, "blockOwnerDeletion": True,
        }]


def test_long_search_names_still_give_dns_labels():
    long_name = "a" * 63
    names = {b.child_name(long_name, c) for c in ("redis", "spec", "controller", "trainer")}
    assert len(names) == 4 and all(len(n) <= 63 for n in names)
    assert b.child_name(long_name, "redis") == b.child_name(long_name, "redis")
    assert b.child_name("a" * 62 + "b", "redis") != b.child_name(long_name, "redis")


def test_gpu_trainers():
    m = gpu_manifest()
    deployment = b.build_trainer_deployment_spec(REF, m, IMAGES, b.trainer_replicas(m, finished=False))
    assert deployment["spec"]["replicas"] == 8
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/kubenas/trainer:0.1.0"  # the manifest's image wins
    assert container["command"] == ["python", "-m", "kubenas_trainer"]
    assert container["args"] == ["--namespace", REF.namespace, "--name", REF.name]
    assert container["resources"] == {
        "requests": {"cpu": "6", "memory": "24Gi"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
    }
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["priorityClassName"] == "kubenas-batch"
    assert "podAntiAffinity" in pod["affinity"]
    assert pod["automountServiceAccountToken"] is False
    assert {"name": "datasets", "persistentVolumeClaim": {"claimName": "cifar10-dataset", "readOnly": True}} in pod["volumes"]
    assert {"name": "datasets", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    env = env_of(container)
    assert env["KUBENAS_REDIS_URL"] == {"name": "KUBENAS_REDIS_URL", "valueFrom": {
        "secretKeyRef": {"name": f"kubenas-{REF.name}-redis", "key": "url"}}}
    assert env["OMP_NUM_THREADS"]["value"] == "6"
    assert env["KUBENAS_NAME"]["value"] == REF.name and env["KUBENAS_NAMESPACE"]["value"] == REF.namespace
    assert env["KUBENAS_TRAINER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert b.trainer_selector(REF.name) == ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())


def test_default_images_and_amd_gpus():
    m = manifest(trainer={"gpus": 2, "gpuResourceName": "amd.com/gpu"})
    deployment = b.build_trainer_deployment_spec(REF, m, IMAGES, 2)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGES.trainer
    assert container["resources"] == {"limits": {"amd.com/gpu": "2"}}
    job = b.build_controller_job_spec(REF, m, IMAGES)
    (controller,) = job["spec"]["template"]["spec"]["containers"]
    assert controller["image"] == IMAGES.controller
    assert "resources" not in controller  # no GPU for the controller unless asked


def test_trainer_replicas_follow_suspend_and_completion():
    assert b.trainer_replicas(manifest(budget={"parallelism": 5}), finished=False) == 5
    assert b.trainer_replicas(manifest(budget={"parallelism": 5}, suspend=True), finished=False) == 0
    assert b.trainer_replicas(manifest(budget={"parallelism": 5}), finished=True) == 0


def test_controller_job():
    m = gpu_manifest()
    job = b.build_controller_job_spec(REF, m, IMAGES)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "kubenas_controller"]
    args = container["args"]
    assert args[args.index("--spec") + 1] == b.SPEC_FILE
    assert args[args.index("--namespace") + 1] == REF.namespace and args[args.index("--name") + 1] == REF.name
    assert "--redis-url" not in args  # from $KUBENAS_REDIS_URL: the password stays out of the command line
    assert env_of(container)["KUBENAS_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "url"
    assert args[args.index("--checkpoint-dir") + 1] == b.CHECKPOINT_DIR
    assert pod["restartPolicy"] == "OnFailure"
    assert {"name": "spec", "configMap": {"name": f"kubenas-{REF.name}-spec"}} in pod["volumes"]
    # with persistence the checkpoint is on its own claim, else on an emptyDir
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": f"kubenas-{REF.name}-controller"}} in pod["volumes"]
    plain = b.build_controller_job_spec(REF, manifest(), IMAGES)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "checkpoints", "emptyDir": {}} in plain
    assert b.build_checkpoint_pvc_spec(REF, m)["spec"]["resources"]["requests"]["storage"] == b.CHECKPOINT_SIZE
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    # the pod template's hash changes with spec.controller, not with the budget or suspend
    same = b.build_controller_job_spec(REF, gpu_manifest().model_copy(update={"spec": m.spec.model_copy(
        update={"suspend": True, "budget": m.spec.budget.model_copy(update={"max_trials": 5})})}), IMAGES)
    other = b.build_controller_job_spec(REF, m.model_copy(update={"spec": m.spec.model_copy(
        update={"controller": m.spec.controller.model_copy(update={"image": "example.com/c:2"})})}), IMAGES)
    key = b.TEMPLATE_HASH_ANNOTATION
    assert same["metadata"]["annotations"][key] == job["metadata"]["annotations"][key]
    assert other["metadata"]["annotations"][key] != job["metadata"]["annotations"][key]


def test_spec_configmap_round_trips_through_load_manifest(tmp_path):
    m = gpu_manifest()
    configmap = b.build_spec_configmap_spec(REF, m)
    path = tmp_path / "search.yaml"
    path.write_text(configmap["data"][b.SPEC_KEY])
    loaded = load_manifest(path)
    assert loaded.spec == m.spec
    assert (loaded.metadata.name, loaded.metadata.namespace) == (REF.name, REF.namespace)
    assert configmap["metadata"]["annotations"][b.GENERATION_ANNOTATION] == "3"


def test_password_only_in_the_secret():
    m = gpu_manifest()
    password = b.derive_redis_password(KEY, REF.namespace, REF.name)
    assert len(password) == 64 and int(password, 16) >= 0
    assert password == b.derive_redis_password(KEY, REF.namespace, REF.name)
    assert password != b.derive_redis_password(KEY, REF.namespace, "other")
    assert password != b.derive_redis_password(b"x" * 32, REF.namespace, REF.name)
    objects = all_objects(m)
    secret = objects[0]
    assert secret["stringData"]["password"] == password
    assert secret["stringData"]["url"] == f"redis://:{password}@kubenas-{REF.name}-redis.{REF.namespace}.svc:6379/0"
    conf = secret["stringData"]["redis.conf"]
    assert f"requirepass {password}" in conf and "appendonly yes" in conf and "maxmemory-policy noeviction" in conf
    for obj in objects[1:]:
        assert password not in json.dumps(obj), obj["kind"]


def test_managed_redis():
    m = gpu_manifest()
    pvc, service, deployment, policy = b.build_managed_redis_objects(
        REF, m, "kubenas-system", {"app.kubernetes.io/name": "kubenas-operator"})
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert {"name": "data", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}} in pod["volumes"]
    assert pod["containers"][0]["args"] == ["redis-server", "/etc/kubenas-redis/redis.conf"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (rule,) = policy["spec"]["ingress"]
    peers = rule["from"]
    assert peers[0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == REF.name
    assert peers[0]["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["controller", "trainer"]}]
    assert peers[1]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kubenas-system"}
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert "appendonly no" in b.build_redis_conf("pw", persistent=False)


def test_external_redis_uses_the_users_secret():
    m = manifest(redis={"mode": "external", "urlSecret": {"name": "team-redis", "key": "uri"}})
    deployment = b.build_trainer_deployment_spec(REF, m, IMAGES, 2)
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    assert env["KUBENAS_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "team-redis", "key": "uri"}
    # a user's env var cannot override the operator's
    m = manifest(trainer={"env": [{"name": "KUBENAS_REDIS_URL", "value": "redis://evil"}, {"name": "A", "value": "1"}]})
    env = b.build_trainer_deployment_spec(REF, m, IMAGES, 2)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e for e in env if e["name"] == "KUBENAS_REDIS_URL"][0]["valueFrom"]
    assert len([e for e in env if e["name"] == "KUBENAS_REDIS_URL"]) == 1


# --- status -----------------------------------------------------------------------------

def obs(now="2026-01-01T00:00:00Z", **kw) -> st.Observation:
    base = dict(now=now, generation=1, suspended=False, selector="sel")
    base.update(kw)
    return st.Observation(**base)


def summary(**kw) -> SearchSummary:
    return SearchSummary.model_validate(kw)


def test_status_lifecycle():
    s = st.compute_status({}, obs(spec_checked=True, reconciled=True))
    assert s["phase"] == "Pending" and s["observedGeneration"] == 1 and s["startTime"] == "2026-01-01T00:00:00Z"
    assert st.condition(s, "SpecValid")["status"] == "True"
    s = st.compute_status(s, obs(now="2026-01-01T00:01:00Z", redis_checked=True))
    assert st.condition(s, "RedisReachable")["reason"] == "NoSummaryYet"
    s = st.compute_status(s, obs(now="2026-01-01T00:02:00Z", redis_checked=True, trainer_ready=2, summary=summary(
        trials={"total": 3, "running": 2, "succeeded": 1}, bestReward=0.8, bestTrial="t1",
        bestGenotype={"space": "nasnet"}, updated="u1", recent=[{"id": "t1", "status": "succeeded", "reward": 0.8}])))
    assert s["phase"] == "Searching" and s["trials"]["total"] == 3 and s["bestReward"] == 0.8 and s["replicas"] == 2
    assert s["recent"] == [{"id": "t1", "status": "succeeded", "reward": 0.8}]  # every summary field is copied
    # unchanged input: nothing to write
    again = st.compute_status(s, obs(now="2026-01-01T00:03:00Z", redis_checked=True, trainer_ready=2, summary=summary(
        trials={"total": 3, "running": 2, "succeeded": 1}, bestReward=0.8, bestTrial="t1",
        bestGenotype={"space": "nasnet"}, updated="u1", recent=[{"id": "t1", "status": "succeeded", "reward": 0.8}])))
    assert st.status_patch(s, again) == {}
    # a condition keeps its transition time while its status holds
    assert st.condition(again, "SpecValid")["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    done = st.compute_status(s, obs(now="2026-01-01T01:00:00Z", redis_checked=True, summary=summary(
        trials={"total": 24, "succeeded": 24}, bestReward=0.9, finished=True, finishReason="MaxTrialsReached")))
    assert done["phase"] == "Succeeded" and done["completionTime"] == "2026-01-01T01:00:00Z"
    assert st.condition(done, "Complete")["reason"] == "MaxTrialsReached"
    patch = st.status_patch(s, done)
    assert patch["phase"] == "Succeeded" and patch["bestTrial"] is None and patch["bestGenotype"] is None
    # sticky: a later summary or a suspend does not bring it back
    later = st.compute_status(done, obs(suspended=True, redis_checked=True, summary=summary(trials={"total": 1})))
    assert later["phase"] == "Succeeded"


@pytest.mark.parametrize("reason", ["TooManyFailedTrials", "ControllerError"])
def test_status_failure_reasons(reason):
    s = st.compute_status({}, obs(summary=summary(finished=True, finishReason=reason)))
    assert s["phase"] == "Failed" and st.condition(s, "Failed")["reason"] == reason


def test_status_controller_failure_and_suspend():
    s = st.compute_status({}, obs(controller_failure="the controller Job failed: BackoffLimitExceeded"))
    assert s["phase"] == "Failed" and s["finishReason"] == "ControllerFailed"
    assert "BackoffLimitExceeded" in st.condition(s, "Failed")["message"]
    s = st.compute_status({"phase": "Searching", "trials": {"total": 4}}, obs(suspended=True))
    assert s["phase"] == "Suspended" and st.condition(s, "Suspended")["status"] == "True"
    assert s["trials"] == {"total": 4}  # progress is kept
    s = st.compute_status(s, obs(suspended=False))
    assert s["phase"] == "Searching" and st.condition(s, "Suspended")["status"] == "False"


def test_invalid_spec_is_a_condition_and_can_be_fixed():
    bad = st.compute_status({}, obs(spec_checked=True, spec_problem=st.Problem("Rejected", "volumes[0]: Required value")))
    assert bad["phase"] == "Failed" and bad["finishReason"] == "InvalidSpec"
    assert st.condition(bad, "SpecValid") == {
        "type": "SpecValid", "status": "False", "reason": "Rejected", "message": "volumes[0]: Required value",
        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}
    fixed = st.compute_status(bad, obs(now="2026-01-01T00:05:00Z", spec_checked=True, reconciled=True))
    assert fixed["phase"] == "Pending" and "finishReason" not in fixed and st.condition(fixed, "Failed") is None
    assert st.condition(fixed, "SpecValid")["lastTransitionTime"] == "2026-01-01T00:05:00Z"


def test_redis_problem_keeps_the_last_summary():
    s = st.compute_status({}, obs(redis_checked=True, summary=summary(trials={"total": 2}, updated="u")))
    s = st.compute_status(s, obs(redis_checked=True, redis_problem=st.Problem("Unreachable", "no route")))
    assert s["phase"] == "Searching" and s["trials"]["total"] == 2
    assert st.condition(s, "RedisReachable")["status"] == "False"


# --- settings ---------------------------------------------------------------------------

def test_settings_from_env(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(b"0123456789abcdef0123\n")
    settings = OperatorSettings.from_env({
        "KUBENAS_CONTROLLER_IMAGE": "c:1", "KUBENAS_TRAINER_IMAGE": "t:1",
        "KUBENAS_OPERATOR_PASSWORD_KEY_FILE": str(key), "KUBENAS_WATCH_NAMESPACES": "a, b-*",
        "KUBENAS_OPERATOR_POD_LABELS": "app=op,tier=control", "KUBENAS_OPERATOR_POLL_SECONDS": "5",
    })
    assert (settings.controller_image, settings.trainer_image) == ("c:1", "t:1")
    assert settings.require_password_key() == b"0123456789abcdef0123"
    assert settings.watch_namespaces == ("a", "b-*")
    assert settings.operator_pod_labels == {"app": "op", "tier": "control"}
    assert settings.poll_seconds == 5
    assert "0123456789abcdef" not in repr(settings)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        OperatorSettings.from_env({"KUBENAS_OPERATOR_PASSWORD_KEY": "short"})
    with pytest.raises(ValueError, match="KUBENAS_OPERATOR_PASSWORD_KEY_FILE"):
        OperatorSettings.from_env({}).require_password_key()


def test_kopf_settings_for_a_real_api_server():
    import kopf

    from kubenas_operator.handlers import configure_kopf

    settings = kopf.OperatorSettings()
    configure_kopf(settings, OperatorSettings(watch_server_timeout=300, watch_client_timeout=330, connect_timeout=30))
    assert settings.watching.server_timeout == 300 and isinstance(settings.watching.server_timeout, int)
    assert settings.watching.client_timeout == 330 and settings.watching.connect_timeout == 30
    # status.kopf would be pruned by the API server (undeclared): progress lives in annotations
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.posting.enabled


def test_example_manifests_are_valid():
    for path in (ROOT / "examples").glob("*.yaml"):
        load_manifest(path)
    with pytest.raises(InvalidSpec, match="operations"):
        parse_manifest(yaml.safe_load("""
apiVersion: kubenas.io/v1alpha1
kind: ArchitectureSearch
metadata: {name: x}
spec: {searchSpace: {operations: 3}}
"""))


def test_the_smallest_network_bound_is_below_every_real_network():
    """kubenas.feasibility.smallest_network_parameters is a true lower bound: the operator refuses
    maxParameters below it, so it must never exceed a network the search could build."""
    import random

    import torch

    from kubenas.nn import ModelConfig, build_model, count_parameters
    from kubenas.spaces import build_space
    from kubenas.spec import ArchitectureSearchSpec
    from kubenas.feasibility import DATASET_SHAPES, smallest_network_parameters

    torch.set_num_threads(1)
    for space_type in ("nasbench201", "nasnet", "darts"):
        space = build_space(space_type)
        for channels, cells in ((2, 1), (4, 2)):
            for dataset in ("digits", "cifar100"):
                spec = ArchitectureSearchSpec.model_validate({
                    "searchSpace": {"type": space_type}, "training": {
                        "channels": channels, "cellsPerStage": cells, "dataset": {"name": dataset}}})
                in_channels, classes = DATASET_SHAPES[dataset]
                config = ModelConfig(channels=channels, cells_per_stage=cells, num_classes=classes,
                                     in_channels=in_channels)
                smallest = min(count_parameters(build_model(space.sample(random.Random(seed)), config))
                               for seed in range(6))
                bound = smallest_network_parameters(spec)
                assert bound <= smallest, (space_type, channels, cells, dataset, bound, smallest)
                assert bound >= 1000 or space_type != "nasbench201"  # the CRD's floor of maxParameters holds


def test_an_unreachable_parameter_limit_is_an_invalid_spec():
    from kubenas_operator.validation import read_spec

    body = {"metadata": {"name": "x", "namespace": "ns"}, "spec": {
        "searchSpace": {"type": "nasnet"}, "training": {"channels": 16},
        "objective": {"constraints": {"maxParameters": 5000}}}}
    with pytest.raises(InvalidSpec, match=r"spec.objective.constraints.maxParameters: 5000 is below the smallest"):
        read_spec(body)
    body["spec"]["objective"]["constraints"]["maxParameters"] = 5_000_000
    assert read_spec(body).spec.objective.constraints.max_parameters == 5_000_000


def test_budget_events_from_kopfs_diff():
    from kubenas_operator import events

    # kopf's diff of the field spec.budget: (operation, path within the field, old, new)
    assert events.budget_changes([("change", ("parallelism",), 2, 6)]) == [("Scaled", "trainers 2 -> 6")]
    assert events.budget_changes([("change", ("parallelism",), 2, 6), ("add", ("maxDuration",), None, "2h"),
                                  ("change", ("maxTrials",), 24, 50)]) == [
        ("Scaled", "trainers 2 -> 6"), ("BudgetChanged", "budget maxDuration None -> 2h, maxTrials 24 -> 50")]
    assert events.budget_changes([("add", (), None, {"maxTrials": 5})]) == [("BudgetChanged", "budget maxTrials None -> 5")]
    assert events.suspended(True, 4)[0] == "Suspended" and events.suspended(False, 4) == ("Resumed", "resumed with 4 trainer(s)")


def test_settings_come_through_kopfs_memo_not_the_import(tmp_path):
    """The handlers read no configuration at import: `python -m kubenas_operator` hands its
    settings to the startup handler in kopf's memo (KopfRunner's operator reads the environment then)."""
    import logging

    import kopf

    code = ("import os\nos.environ['KUBENAS_OPERATOR_POLL_SECONDS'] = 'not a number'\n"
            "import kubenas_operator.handlers\n")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0

    from kubenas_operator import handlers

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    settings = OperatorSettings(password_key=b"0123456789abcdef", poll_seconds=3.5, kubeconfig=str(kubeconfig))
    memo = kopf.Memo(settings=settings)
    handlers.startup(settings=kopf.OperatorSettings(), memo=memo, logger=logging.getLogger("test"))
    try:
        assert memo.kubenas.settings is settings and memo.kubenas.client_config.host == "https://127.0.0.1:6443"
    finally:
        handlers.cleanup(memo=memo)
