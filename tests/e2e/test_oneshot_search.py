"""A one-shot (ENAS) search on the mini-cluster, with a worker lost in the middle of an epoch.

The same real control plane and node agent as test_whole_search.py (its fixtures). The
operator runs the supernet's two data-parallel workers as an Indexed Job with a headless
Service: each worker's rank is its completion index (JOB_COMPLETION_INDEX, set by the real
Job controller), rank 0 is reached as <job>-0.<service> (the pod's host name under the
Service's subdomain; the node agent's hosts files stand in for the cluster DNS), and they
share the supernet checkpoints on the search's artifacts volume.

After the first epoch's checkpoint, rank 1's process is SIGKILLed. Its pod fails; rank 0's collective times out
(KUBENAS_ONESHOT_TIMEOUT=20 in the manifest) and it exits too; the Job replaces both pods
(backoffLimit = workers x oneShot.maxRestarts), the new group rendezvouses again and resumes
from the last checkpoint. The derived cells are then trained stand-alone by the trainers,
and the search succeeds with their stand-alone reward.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_whole_search import (  # noqa: F401 - the module-scoped fixtures
    NS, MiniCluster, container_pid, installed, live_pods, mini,
)

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(600)]

MANIFEST = Path(__file__).with_name("enas-search.yaml")
SEARCH = yaml.safe_load(MANIFEST.read_text())["metadata"]["name"]
SUPERNET_EPOCHS = yaml.safe_load(MANIFEST.read_text())["spec"]["strategy"]["parameters"]["supernetEpochs"]
SUPERNET = f"kubenas-{SEARCH}-supernet"  # kubenas_operator.builders.supernet_name: the Job and the Service
WORKERS = f"app.kubernetes.io/instance={SEARCH},app.kubernetes.io/component=supernet"


def worker_pods(mini: MiniCluster) -> list[dict]:
    return live_pods(mini, WORKERS)


def artifacts(mini: MiniCluster) -> list[Path]:
    """The search's artifacts volume on the node (the agent's hostPath volume for its claim)."""
    return sorted((mini.agent.data_dir / "volumes").glob(f"{NS}_kubenas-{SEARCH}-artifacts*"))


def epochs_done(mini: MiniCluster) -> int:
    """The latest supernet epoch checkpointed (the worker contract: supernet/epoch-<e>.json)."""
    done = [int(m.group(1)) for volume in artifacts(mini) for p in volume.glob("supernet/epoch-*.json")
            if (m := re.fullmatch(r"epoch-(\d+)\.json", p.name))]
    return max(done, default=0)


def test_an_enas_search_survives_a_worker_killed_mid_epoch(installed: MiniCluster):
    mini = installed
    phases: list[str] = []

    def phase() -> str:
        value = ((mini.get("archsearch", SEARCH) or {}).get("status") or {}).get("phase", "")
        if value and (not phases or phases[-1] != value):
            phases.append(value)
        return value

    try:
        mini.kubectl("apply", "-n", NS, "-f", str(MANIFEST))
        mini.mark("enas search applied")
        job = mini.wait_for("the supernet Job", lambda: mini.get("job", SUPERNET), timeout=120)
        assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
        service = mini.get("service", SUPERNET)
        assert service is not None and service["spec"]["clusterIP"] == "None"

        def two_running():
            pods = [p for p in worker_pods(mini) if p["status"].get("phase") == "Running"]
            return pods if len(pods) == 2 else None

        pods = mini.wait_for("two running worker pods", two_running, timeout=180)
        mini.mark("workers running")
        # Rank 1 dies mid-training: after at least one epoch's checkpoint, before the last. An epoch
        # takes about a second, so which epoch it dies in depends on the machine's load.
        mini.wait_for("epoch 1 of the supernet", lambda: (phase(), epochs_done(mini) >= 1)[1], timeout=300)
        done_at_kill = epochs_done(mini)
        assert done_at_kill < SUPERNET_EPOCHS, "the supernet finished before the kill: raise its epochs"
        # No phase is asserted yet: the phase comes from the controller, which may reach Redis only
        # after the workers' first epoch; the Job's restart keeps the search in Supernet long enough.
        victim = next(p for p in pods
                      if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1")
        pid = container_pid(mini.get("pod", victim["metadata"]["name"]))
        assert pid is not None, victim["metadata"]["name"]
        os.killpg(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        mini.mark(f"rank 1 killed in epoch {done_at_kill + 1}")

        def succeeded():
            if phase() == "Failed":
                raise AssertionError(f"the search failed: {json.dumps(mini.get('archsearch', SEARCH)['status'])}")
            return mini.get("archsearch", SEARCH) if phases[-1:] == ["Succeeded"] else None

        search = mini.wait_for("phase Succeeded", succeeded, timeout=420, interval=1.0)
        mini.mark(f"Succeeded ({time.monotonic() - killed_at:.0f}s after the kill)")
        status = search["status"]

        # The group was restarted by the Job and resumed from the last checkpoint, not from scratch.
        job = mini.get("job", SUPERNET)
        assert (job.get("status") or {}).get("failed", 0) >= 1, job.get("status")
        assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"])
        logs = mini.container_logs(NS, SUPERNET, "worker")
        starts = [line for text in logs.values() for line in text.splitlines() if "event=start" in line]
        # Rank 0 may still checkpoint the epoch whose last step rank 1 had finished when it died.
        resumed = {int(m.group(1)) for line in starts if (m := re.search(r"resumed_from=(\d+)", line))}
        assert resumed & {done_at_kill, done_at_kill + 1}, (done_at_kill, starts)
        assert "Supernet" in phases and phases[-1] == "Succeeded", phases

        # The derived cells went through the ordinary queue: the search's trials are exactly them.
        counts = status["trials"]
        assert counts["succeeded"] == counts["total"] == 2, counts
        assert status["finished"] is True and status["finishReason"] == "DerivedGenotypesTrained", status
        assert status["bestReward"] >= 0.3, status
        derived = next(volume / "supernet" / "derived.json" for volume in artifacts(mini))
        hashes = {g["hash"] for g in json.loads(derived.read_text())["genotypes"]}
        from kubenas.spaces import build_space

        assert build_space("nasbench201").hash(status["bestGenotype"]) in hashes
        print(f"\nphases seen: {phases}; timings: {mini.timings}")
    except BaseException:
        print(mini.diagnostics())
        print("--- worker logs:")
        for pod, text in mini.container_logs(NS, SUPERNET, "worker").items():
            print(f"--- {pod}:\n" + "\n".join(text.splitlines()[-15:]))
        raise
