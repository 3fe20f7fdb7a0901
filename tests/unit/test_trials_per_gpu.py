"""trainer.trialsPerGPU: the manifest field, the trainer pod's args, and how the supervisor
derives each trainer process's flags (the processes themselves: tests/redis/test_trials_per_gpu.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubenas.errors import InvalidSpec
from kubenas.manifest import parse_manifest
from kubenas_operator import builders as b
from kubenas_trainer.main import parse_args
from kubenas_trainer.supervisor import child_argv, child_metrics_port, child_threads

REF = b.SearchRef(name="packed", namespace="research", uid="0b5e0f5e-1111-2222-3333-444455556666", generation=1)
IMAGES = b.Images(controller="example.com/kubenas/controller:1", trainer="example.com/kubenas/trainer:1")


def manifest(**spec):
    return parse_manifest({"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
                           "metadata": {"name": REF.name, "namespace": REF.namespace}, "spec": spec})


def test_the_trainer_pod_runs_k_trainer_processes():
    m = manifest(trainer={"gpus": 1, "trialsPerGPU": 4})
    assert m.spec.trainer.trials_per_gpu == 4
    (container,) = b.build_trainer_deployment_spec(REF, m, IMAGES, 2)["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["--namespace", REF.namespace, "--name", REF.name, "--processes", "4"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "1"}}  # still one GPU: they share it
    # Each process's /metrics port is declared, so that the chart's PodMonitor scrapes all four.
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("metrics", 8080), ("metrics-1", 8081), ("metrics-2", 8082), ("metrics-3", 8083)]
    (plain,) = b.build_trainer_deployment_spec(REF, manifest(), IMAGES, 2)["spec"]["template"]["spec"]["containers"]
    assert "--processes" not in plain["args"]
    assert [p["name"] for p in plain["ports"]] == ["metrics"]


@pytest.mark.parametrize("spec, field", [
    ({"controller": {"trialsPerGPU": 2}}, "controller.trialsPerGPU: only the trainer pods train trials"),
    ({"trainer": {"trialsPerGPU": 0}}, "trainer.trialsPerGPU"),
    ({"trainer": {"trialsPerGPU": 17}}, "trainer.trialsPerGPU"),
    ({"trainer": {"trialsPerGpu": 2}}, "trainer.trialsPerGpu"),  # spelled as the issue and the CRD spell it
])
def test_trials_per_gpu_refused_where_it_means_nothing(spec, field):
    with pytest.raises(InvalidSpec) as info:
        manifest(**spec)
    assert field in str(info.value)


def test_each_trainer_process_gets_its_own_id_port_and_threads():
    argv = ["--name", "s", "--processes", "3", "--trainer-id=pod-x", "--metrics-port", "8080", "--device", "cuda"]
    assert child_argv(argv, "pod-x-1", 8081, 2) == [
        "--name", "s", "--device", "cuda", "--processes", "1", "--trainer-id", "pod-x-1", "--metrics-port", "8081",
        "--threads", "2"]
    assert [child_metrics_port(8080, i) for i in range(3)] == [8080, 8081, 8082]
    assert child_metrics_port(-1, 2) == -1 and child_metrics_port(0, 2) == 0
    assert child_threads(None, 3, {"OMP_NUM_THREADS": "6"}) == 2  # the pod's CPUs shared out
    assert child_threads(None, 8, {"OMP_NUM_THREADS": "6"}) == 1
    assert child_threads(5, 3, {"OMP_NUM_THREADS": "6"}) == 5  # --threads is per process
    assert parse_args(["--name", "s"]).processes == 1


@pytest.mark.parametrize("flags, message", [
    (["--processes", "0"], "--processes: 0 is not accepted"),
    (["--processes", "2", "--metrics-port", "65535"], "--metrics-port: 65535 is not accepted with --processes 2"),
])
def test_bad_processes_flags_are_refused_in_one_line(flags, message):
    out = subprocess.run([sys.executable, "-m", "kubenas_trainer", "--name", "s", *flags],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
