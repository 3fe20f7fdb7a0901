"""Every Prometheus metric kubenas exports, in one place.

Names start with `kubenas_`; counters end in `_total`, durations in
`_seconds`. Every metric carries the label `search` (`namespace/name`), so
one Prometheus can watch many searches. Each process exports only the
metrics it updates; the HTTP endpoint (`serve`) also answers `/healthz`.
"""

from __future__ import annotations

import http.server
import threading
from typing import Callable, Optional

from prometheus_client import REGISTRY, CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from kubenas.spec import PARETO_ARCHIVE_CAPACITY

SEARCH = "search"
# A controller's or trainer's /metrics port unless KUBENAS_METRICS_PORT says otherwise (the
# operator declares it on their containers, and the chart's PodMonitor scrapes what is declared).
DEFAULT_PORT = 8080

# Fine below a second (dispatch, checkpoints), coarse above (training).
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)

# --- shared by every process --------------------------------------------------------

MESSAGES_REJECTED = Counter(
    "kubenas_messages_rejected_total",
    "Stream entries rejected as malformed, truncated, oversized or of the wrong kind (logged, then dropped).",
    [SEARCH, "stream"])
REDIS_ERRORS = Counter(
    "kubenas_redis_errors_total",
    "Redis calls that failed (unreachable, timed out, loading); each is retried with backoff.",
    [SEARCH, "process"])

# --- controller ---------------------------------------------------------------------

TRIALS_DISPATCHED = Counter(
    "kubenas_trials_dispatched_total", "Trials published to the trial queue (re-publications included).",
    [SEARCH])
TRIALS_COMPLETED = Counter(
    "kubenas_trials_completed_total",
    "Trial results applied to the strategy, by outcome: succeeded, diverged, stopped, failed.",
    [SEARCH, "outcome"])
RESULTS_DUPLICATE = Counter(
    "kubenas_results_duplicate_total",
    "Results for a trial that was already applied (a re-delivered trial finished twice): ignored.",
    [SEARCH])
TRIALS_REPUBLISHED = Counter(
    "kubenas_trials_republished_total",
    "Trials published again because their queue entry was lost (Redis data loss, a deleted entry).",
    [SEARCH])
TRIALS_IN_FLIGHT = Gauge(
    "kubenas_trials", "Trials in flight, by state: pending (queued) or running (a trainer holds it).",
    [SEARCH, "state"])
BEST_REWARD = Gauge("kubenas_best_reward", "The best reward of the search so far.", [SEARCH])
PARETO_HYPERVOLUME = Gauge(
    "kubenas_pareto_hypervolume",
    "The Pareto front's hypervolume: several objectives, costs scaled by the largest seen, reference accuracy 0 "
    "and scaled cost 1; one objective, the best reward (above 0). Never falls while the front fits in the "
    f"{PARETO_ARCHIVE_CAPACITY} members the controller keeps.", [SEARCH])
PARETO_FRONT_SIZE = Gauge("kubenas_pareto_front_size",
                          f"Trials on the Pareto front the controller keeps (at most {PARETO_ARCHIVE_CAPACITY}; "
                          "one objective: 1, the best trial).", [SEARCH])
SEARCH_FINISHED = Gauge("kubenas_search_finished", "1 once the search has finished.", [SEARCH])
APPLY_SECONDS = Histogram(
    "kubenas_apply_seconds",
    "Controller: one batch of results applied, checkpointed and acknowledged.",
    [SEARCH], buckets=FAST_BUCKETS)
CHECKPOINT_SECONDS = Histogram(
    "kubenas_checkpoint_seconds", "Controller: writing the strategy state and trial log.",
    [SEARCH], buckets=FAST_BUCKETS)
CHECKPOINT_BYTES = Gauge("kubenas_checkpoint_bytes", "Size of the last strategy-state checkpoint.", [SEARCH])
TRIAL_SECONDS = Histogram(
    "kubenas_trial_seconds", "A trial from its dispatch to its result applied.", [SEARCH], buckets=SLOW_BUCKETS)

# --- trainer ------------------------------------------------------------------------

TRAINER_TRIALS = Counter(
    "kubenas_trainer_trials_total",
    "Trials a trainer ended, by outcome: succeeded, diverged, stopped, failed, retried (an error, handed "
    "back), handed_back (SIGTERM), lost (lease expired), dead_lettered, skipped (cancelled).",
    [SEARCH, "outcome"])
TRIALS_RECLAIMED = Counter(
    "kubenas_trials_reclaimed_total",
    "Trials a trainer took over after their lease expired or they were handed back.", [SEARCH])
EPOCH_SECONDS = Histogram(
    "kubenas_trainer_epoch_seconds", "One training epoch (with validation).", [SEARCH], buckets=SLOW_BUCKETS)
IMAGES_PER_SECOND = Gauge("kubenas_trainer_images_per_second", "Training throughput of the last epoch.", [SEARCH])
BUSY_SECONDS = Counter("kubenas_trainer_busy_seconds_total", "Seconds a trainer spent on trials.", [SEARCH])
IDLE_SECONDS = Counter("kubenas_trainer_idle_seconds_total", "Seconds a trainer spent waiting for trials.", [SEARCH])

# --- trial checkpoints (trainers save and resume them; the controller prunes them) ------

TRIAL_CHECKPOINT_BYTES = Gauge(
    "kubenas_trial_checkpoint_bytes", "Bytes of trial checkpoints in the search's artifact store.", [SEARCH])
TRIAL_CHECKPOINT_SAVE_SECONDS = Histogram(
    "kubenas_trial_checkpoint_save_seconds", "Writing one trial checkpoint (atomically, fsynced).",
    [SEARCH], buckets=FAST_BUCKETS)
TRIAL_CHECKPOINTS_INVALID = Counter(
    "kubenas_trial_checkpoints_invalid_total",
    "Trial checkpoints that could not be used (the trial restarted from scratch), by reason: "
    "missing, truncated, corrupt, mismatch, shape.", [SEARCH, "reason"])
TRIAL_CHECKPOINT_ERRORS = Counter(
    "kubenas_trial_checkpoint_errors_total", "Trial checkpoints that could not be written (training went on).",
    [SEARCH])
TRIALS_RESUMED = Counter(
    "kubenas_trials_resumed_total", "Trials that continued from a checkpoint instead of from scratch.", [SEARCH])
TRIAL_CHECKPOINT_FREED_BYTES = Counter(
    "kubenas_trial_checkpoint_freed_bytes_total", "Bytes of trial checkpoints removed once no longer needed.",
    [SEARCH])


# --- operator -----------------------------------------------------------------------

OPERATOR_RECONCILES = Counter(
    "kubenas_operator_reconciles_total",
    "Operator: create/resume/update handlings of a search, by result: ok, invalid (a condition says why).",
    [SEARCH, "result"])
OPERATOR_RECONCILE_ERRORS = Counter(
    "kubenas_operator_reconcile_errors_total",
    "Operator: reconciles or status refreshes that failed on an API error and will be retried.",
    [SEARCH])
OPERATOR_STATUS_WRITES = Counter(
    "kubenas_operator_status_writes_total",
    "Operator: status patches of a search (only when something changed).",
    [SEARCH])

# --- the endpoint -------------------------------------------------------------------

def serve(port: int, healthy: Callable[[], tuple[bool, str]], host: str = "0.0.0.0"
          ) -> Optional[http.server.ThreadingHTTPServer]:
    """Serve /metrics and /healthz on `port` (0: any free port; negative: none) from a daemon thread."""
    if port < 0:
        return None

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?")[0]
            if path == "/metrics":
                body, status, ctype = generate_latest(REGISTRY), 200, CONTENT_TYPE_LATEST
            elif path in ("/healthz", "/livez", "/readyz"):
                ok, reason = healthy()
                body, status, ctype = (reason or ("ok" if ok else "unhealthy")).encode() + b"\n", \
                    (200 if ok else 503), "text/plain; charset=utf-8"
            else:
                body, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


# --- added for the Grafana dashboard and alert rules (helm/kubenas/files/) ------------
# Defined here so every name the dashboard and rules use lives in this module; the
# process named in each help text must update it (not wired yet when they were added).

# Rewards are accuracies (fractions), possibly scaled by a cost penalty: 0.05 steps.
REWARD_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))

TRIAL_REWARD = Histogram(
    "kubenas_trial_reward",
    "Controller: the reward of each succeeded trial as applied (the search's objective).",
    [SEARCH], buckets=REWARD_BUCKETS)
POLICY_ENTROPY = Gauge(
    "kubenas_controller_policy_entropy",
    "Controller, RL strategies (ppo, reinforce): mean entropy in nats of the policy's last sampled batch.",
    [SEARCH])
# One-shot searches (enas, darts, spos): the controller relays what the supernet's rank 0
# writes to the artifact store every epoch (ARTIFACTS/supernet/epoch-<e>.json), so the same
# numbers reach Prometheus locally and in a cluster without a port on the workers.
SUPERNET_EPOCH = Gauge(
    "kubenas_supernet_epoch", "Controller, one-shot searches: supernet epochs checkpointed so far.", [SEARCH])
SUPERNET_EPOCHS = Gauge(
    "kubenas_supernet_epochs", "Controller, one-shot searches: the supernet's epochs in all.", [SEARCH])
SUPERNET_LOSS = Gauge(
    "kubenas_supernet_loss", "Controller, one-shot searches: the supernet's loss of its last epoch, by split "
    "(train, validation).", [SEARCH, "split"])
SUPERNET_ACCURACY = Gauge(
    "kubenas_supernet_accuracy", "Controller, one-shot searches: the supernet's accuracy of its last epoch, by "
    "split (train, validation).", [SEARCH, "split"])
SUPERNET_ARCH_ENTROPY = Gauge(
    "kubenas_supernet_architecture_entropy",
    "Controller, one-shot searches: entropy in nats of the architecture distribution after the last epoch "
    "(darts: mean over edges of the softmax over operations; enas: the policy's, summed over its decisions). "
    "Falling means it decides.",
    [SEARCH])
SEARCH_PHASE = Gauge(
    "kubenas_search_phase",
    "Operator: 1 for the search's current phase (Pending, Searching, FinalTraining, Suspended, Succeeded, Failed), 0 for the others.",
    [SEARCH, "phase"])
