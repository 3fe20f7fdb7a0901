"""Bad input at every entry point, as a new user would type it: each case must exit non-zero
within the time limit with one readable message naming what is wrong, never a traceback,
and a `kubenas run` must leave an existing results directory exactly as it was.

Each case runs the real command in its own process; the cheap ones (refused while parsing)
dominate, and the cases run a few at a time so the file stays quick on a small machine."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from kubenas.local.redis_server import free_port

KUBENAS = [sys.executable, "-m", "kubenas.cli"]
CONTROLLER = [sys.executable, "-m", "kubenas_controller", "--metrics-port", "-1"]
TRAINER = [sys.executable, "-m", "kubenas_trainer", "--metrics-port", "-1"]
UNREACHABLE = "redis://127.0.0.1:1/0"
LIMIT_S = 90  # generous for a loaded CI machine; a hang is what this catches

BASE = {
    "apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
    "metadata": {"name": "audit"},
    "spec": {
        "searchSpace": {"type": "nasbench201"},
        "strategy": {"algorithm": "random"},
        "budget": {"maxTrials": 2, "parallelism": 1, "maxDuration": "1m"},
        "training": {"dataset": {"name": "digits"}, "epochs": 1, "batchSize": 64, "cellsPerStage": 1, "channels": 4},
    },
}
OK_CELL = "|skip_connect~0|+|avg_pool_3x3~0|none~1|+|nor_conv_1x1~0|none~1|nor_conv_3x3~2|"
DELETE = object()


def changed(**paths):
    """BASE with {dotted path: value} applied ('__' in a keyword stands for '.')."""
    doc = copy.deepcopy(BASE)
    for dotted, value in paths.items():
        node = doc
        *parents, last = dotted.replace("__", ".").split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return yaml.safe_dump(doc)


def with_line(after: str, line: str) -> str:
    """BASE as YAML with a raw line inserted (for .inf and .nan, which safe_dump cannot express as typed)."""
    text = yaml.safe_dump(BASE)
    assert after in text
    return text.replace(after, after + line, 1)


BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "spec: *i\n"


def hp(**fields):
    return changed(spec__searchSpace__hyperparameters=[fields])


# (id, manifest text or bytes, extra flags, expected text in the message)
RUN_CASES = [
    ("yaml-malformed", "spec: [unclosed\n  budget: {\n", [], "not valid YAML"),
    ("yaml-binary", bytes(range(256)) * 10, [], "not UTF-8"),
    ("yaml-alias-bomb", BOMB, [], "aliases"),
    ("json-deep", "[" * 20000 + "]" * 20000, [], "nested too deeply"),
    ("yaml-deep", "a: " + "{b: " * 5000 + "1" + "}" * 5000 + "\n", [], "nested too deeply"),
    ("yaml-duplicate-key", yaml.safe_dump(BASE) + "metadata:\n  name: other\n", [], "duplicate key 'metadata'"),
    ("yaml-multidoc", yaml.safe_dump(BASE) + "---\n" + yaml.safe_dump(BASE), [], "one search per file"),
    ("yaml-empty", "", [], "no document with kind"),
    ("yaml-scalar", "42\n", [], "no document with kind"),
    ("wrong-kind", changed(kind="Deployment"), [], "kind"),
    ("no-name", changed(metadata__name=DELETE), [], "metadata.name"),
    ("bad-name", changed(metadata__name="Bad_Name!"), [], "metadata.name"),
    ("namespace-bad-chars", changed(metadata__namespace="ns with spaces {}"), [], "metadata.namespace"),
    ("maxtrials-quoted", changed(spec__budget__maxTrials="5"), [], "spec.budget.maxTrials"),
    ("maxtrials-float", changed(spec__budget__maxTrials=2.5), [], "spec.budget.maxTrials"),
    ("maxtrials-bool", changed(spec__budget__maxTrials=True), [], "spec.budget.maxTrials"),
    ("budget-as-list", changed(spec__budget=[1]), [], "spec.budget"),
    ("unknown-field-top", changed(spec__budgett={"maxTrials": 1}), [], "spec.budgett"),
    ("unknown-field-nested", changed(spec__training__epoch=3), [], "spec.training.epoch"),
    ("maxtrials-negative", changed(spec__budget__maxTrials=-1), [], "spec.budget.maxTrials"),
    ("maxtrials-huge", changed(spec__budget__maxTrials=10**30), [], "spec.budget.maxTrials"),
    ("maxduration-zero", changed(spec__budget__maxDuration="0s"), [], "spec.budget.maxDuration"),
    ("maxduration-garbage", changed(spec__budget__maxDuration="forever"), [], "spec.budget.maxDuration"),
    ("parallelism-zero", changed(spec__budget__parallelism=0), [], "spec.budget.parallelism"),
    ("epochs-million", changed(spec__training__epochs=1000000), [], "spec.training.epochs"),
    ("lr-negative", changed(spec__training__learningRate=-0.1), [], "spec.training.learningRate"),
    ("lr-inf", with_line("epochs: 1\n", "    learningRate: .inf\n"), [], "spec.training.learningRate"),
    ("lr-nan", with_line("epochs: 1\n", "    learningRate: .nan\n"), [], "spec.training.learningRate"),
    ("batchsize-zero", changed(spec__training__batchSize=0), [], "spec.training.batchSize"),
    ("validation-fraction-huge", changed(spec__training__dataset__validationFraction=0.9995), [],
     "validationFraction"),
    ("hp-lr-negative", hp(name="learningRate", type="float", low=-0.1, high=0.1), [], "learningRate"),
    ("hp-batch-zero", hp(name="batchSize", type="categorical", choices=[0, 32]), [], "batchSize"),
    ("hp-epochs-million", hp(name="epochs", type="int", low=1, high=1000000), [], "epochs"),
    ("hp-lr-inf-high", with_line("searchSpace:\n", "    hyperparameters:\n"
                                 "    - {name: learningRate, type: float, low: 0.01, high: .inf}\n"), [], "learningRate"),
    ("hp-unknown-name", hp(name="dropout", type="float", low=0.1, high=0.2), [], "hyperparameters.0.name"),
    ("hp-low-above-high", hp(name="momentum", type="float", low=0.9, high=0.1), [], "low must be below high"),
    ("costpenalty-target-inf", with_line("spec:\n", "  objective:\n    costPenalty: {metric: parameters, target: .inf}\n"),
     [], "costPenalty.target"),
    ("costpenalty-target-zero", changed(spec__objective__costPenalty={"metric": "parameters", "target": 0}), [],
     "costPenalty.target"),
    ("costpenalty-weight-positive",
     changed(spec__objective__costPenalty={"metric": "parameters", "target": 1000, "weight": 5}), [],
     "costPenalty.weight"),
    ("constraint-maxparams-1", changed(spec__objective__constraints={"maxParameters": 1}), [], "maxParameters"),
    ("objective-target-2", changed(spec__objective__target=2), [], "spec.objective.target"),
    ("unknown-space", changed(spec__searchSpace__type="resnet"), [], "spec.searchSpace.type"),
    ("unknown-operation", changed(spec__searchSpace__operations=["conv_9x9"]), [], "conv_9x9"),
    ("operation-other-space", changed(spec__searchSpace__operations=["sep_conv_3x3"]), [], "sep_conv_3x3"),
    ("operations-only-none", changed(spec__searchSpace__operations=["none"]), [], "spec.searchSpace.operations"),
    ("blocks-nasbench201", changed(spec__searchSpace__blocks=3), [], "blocks"),
    ("blocks-too-many", changed(spec__searchSpace={"type": "nasnet", "blocks": 50}), [], "spec.searchSpace.blocks"),
    ("unknown-strategy", changed(spec__strategy__algorithm="genetic-magic"), [], "spec.strategy.algorithm"),
    ("strategy-param-wrong-type",
     changed(spec__strategy={"algorithm": "evolution", "parameters": {"population": "big"}}), [], "population"),
    ("strategy-param-unknown", changed(spec__strategy={"algorithm": "evolution", "parameters": {"flavour": 3}}), [],
     "flavour"),
    ("strategy-param-negative",
     changed(spec__strategy={"algorithm": "evolution", "parameters": {"population": -4}}), [], "population"),
    ("bohb-with-asha", changed(spec__strategy__algorithm="bohb", spec__training__earlyStopping={"algorithm": "asha"}),
     [], "earlyStopping"),
    ("dataset-unknown", changed(spec__training__dataset={"name": "imagenet"}), [], "dataset.name"),
    ("flag-trainers-0", changed(), ["--trainers", "0"], "--trainers"),
    ("flag-trainers-text", changed(), ["--trainers", "two"], "--trainers"),
    ("flag-lease-negative", changed(), ["--lease-seconds", "-5"], "--lease-seconds"),
    ("flag-lease-nan", changed(), ["--lease-seconds", "nan"], "--lease-seconds"),
    ("flag-threads-negative", changed(), ["--threads", "-1"], "--threads"),
    ("flag-device-garbage", changed(), ["--device", "tpu9"], "--device"),
    ("flag-metrics-port-70000", changed(), ["--metrics-port", "70000"], "--metrics-port"),
    # These pass parsing: the dataset and the Redis are checked before anything starts.
    ("npz-missing", changed(spec__training__dataset={"name": "npz", "root": "/nonexistent/h9.npz"}), [],
     "training.dataset.root"),
    ("cifar-no-root", changed(spec__training__dataset={"name": "cifar10"}), [], "training.dataset.root"),
    ("flag-redis-bad-db", changed(), ["--redis-url", "REDIS/99999"], "database index 99999"),
    ("flag-redis-bad-scheme", changed(), ["--redis-url", "http://127.0.0.1:6379/0"], "--redis-url"),
]

GENOTYPES = {
    "binary": bytes(range(256)) * 4,
    "deep-json": "[" * 20000 + "]" * 20000,
    "space-list": json.dumps({"space": ["nasnet"], "cell": "x"}),
    "unknown-op": json.dumps({"space": "nasbench201", "hparams": {},
                              "cell": "|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|"}),
    "other-space-op": json.dumps({"space": "nasbench201", "hparams": {},
                                  "cell": "|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"}),
    "bad-input-index": json.dumps({"space": "nasbench201", "hparams": {},
                                   "cell": "|skip_connect~5|+|none~0|none~1|+|none~0|none~1|none~2|"}),
    "epochs-inf": '{"space": "nasbench201", "cell": "%s", "hparams": {"epochs": Infinity}}' % OK_CELL,
    "lr-nan": '{"space": "nasbench201", "cell": "%s", "hparams": {"learningRate": NaN}}' % OK_CELL,
    "batch-zero": json.dumps({"space": "nasbench201", "cell": OK_CELL, "hparams": {"batchSize": 0}}),
    "hp-unknown": json.dumps({"space": "nasbench201", "cell": OK_CELL, "hparams": {"dropout": 0.5}}),
    "nasnet-bad-input": json.dumps({
        "space": "nasnet", "hparams": {},
        "normal": [{"inputs": [7, 0], "ops": ["identity", "identity"], "combine": "add"}],
        "reduction": [{"inputs": [0, 1], "ops": ["identity", "identity"], "combine": "add"}]}),
    "no-space": json.dumps({"cell": OK_CELL}),
    "top-list": "[1, 2, 3]",
    "empty": "",
    "good": json.dumps({"space": "nasbench201", "cell": OK_CELL, "hparams": {}}),
}
DESCRIBE_EXPECT = {
    "binary": "not UTF-8", "deep-json": "nested too deeply", "space-list": "genotype.space",
    "unknown-op": "conv_9x9", "other-space-op": "sep_conv_3x3", "bad-input-index": "genotype.cell",
    "epochs-inf": "genotype.hparams.epochs", "lr-nan": "genotype.hparams.learningRate",
    "batch-zero": "genotype.hparams.batchSize", "hp-unknown": "dropout", "nasnet-bad-input": "genotype.normal[0].inputs[0]",
    "no-space": "genotype.space", "top-list": "JSON object", "empty": "not valid JSON",
}

# (id, argv with {G:name} for a genotype file, {OUT} for a fresh directory, {REDIS} for the test's Redis;
#  expected text in the message)
OTHER_CASES = [
    *[(f"describe-{name}", KUBENAS + ["describe", f"{{G:{name}}}"], expect) for name, expect in DESCRIBE_EXPECT.items()],
    ("describe-missing", KUBENAS + ["describe", "/nonexistent/h9.json"], "/nonexistent/h9.json"),
    ("sample-blocks-absurd", KUBENAS + ["sample", "nasnet", "--blocks", "100000000"], "--blocks"),
    ("sample-blocks-zero", KUBENAS + ["sample", "darts", "--blocks", "0"], "--blocks"),
    ("sample-blocks-nb201", KUBENAS + ["sample", "nasbench201", "--blocks", "3"], "--blocks"),
    ("sample-unknown-space", KUBENAS + ["sample", "resnet"], "resnet"),
    ("sample-seed-text", KUBENAS + ["sample", "nasnet", "--seed", "x"], "--seed"),
    # These import torch before refusing: a few only, to keep the file quick.
    ("describe-input-zero", KUBENAS + ["describe", "{G:good}", "--input", "0x32x32"], "--input"),
    ("train-epochs-inf", KUBENAS + ["train", "{G:epochs-inf}"], "genotype.hparams.epochs"),
    ("train-batch-zero-flag", KUBENAS + ["train", "{G:good}", "--batch-size", "0"], "--batch-size"),
    ("train-fixed-split-fraction", KUBENAS + ["train", "{G:good}", "--dataset", "distorted-digits",
                                               "--validation-fraction", "0.3"], "--validation-fraction"),
    ("export-space-list", KUBENAS + ["export", "{G:space-list}", "--output", "{OUT}"], "genotype.space"),
    ("export-output-under-file", KUBENAS + ["export", "{G:good}", "--output", "/etc/passwd/x"], "--output"),
    ("ctl-spec-missing", CONTROLLER + ["--spec", "/nonexistent/h9.yaml", "--redis-url", UNREACHABLE],
     "/nonexistent/h9.yaml"),
    ("ctl-spec-binary", CONTROLLER + ["--spec", "{G:binary}", "--redis-url", UNREACHABLE], "not UTF-8"),
    ("ctl-spec-bomb", CONTROLLER + ["--spec", "{G:bomb}", "--redis-url", UNREACHABLE], "aliases"),
    ("ctl-lease-negative", CONTROLLER + ["--spec", "{G:manifest}", "--lease-seconds", "-1"], "--lease-seconds"),
    ("ctl-max-attempts-0", CONTROLLER + ["--spec", "{G:manifest}", "--max-attempts", "0"], "--max-attempts"),
    ("ctl-prefetch-negative", CONTROLLER + ["--spec", "{G:manifest}", "--prefetch", "-2"], "--prefetch"),
    ("ctl-finish-grace-nan", CONTROLLER + ["--spec", "{G:manifest}", "--finish-grace", "nan"], "--finish-grace"),
    ("ctl-metrics-port-70000", CONTROLLER + ["--spec", "{G:manifest}", "--metrics-port", "70000"], "--metrics-port"),
    ("ctl-log-level-bogus", CONTROLLER + ["--spec", "{G:manifest}", "--log-level", "LOUD"], "--log-level"),
    ("ctl-redis-bad-url", CONTROLLER + ["--spec", "{G:manifest}", "--redis-url", "not a url"], "--redis-url"),
    ("ctl-redis-bad-db", CONTROLLER + ["--spec", "{G:manifest}", "--redis-url", "{REDIS}/99999"],
     "database index 99999"),
    ("ctl-namespace-bad", CONTROLLER + ["--spec", "{G:manifest}", "--namespace", "a b{c}", "--redis-url", UNREACHABLE],
     "namespace"),
    ("trn-no-name", TRAINER + ["--redis-url", UNREACHABLE], "--name"),
    ("trn-threads-negative", TRAINER + ["--name", "a", "--threads", "-1"], "--threads"),
    ("trn-device-garbage", TRAINER + ["--name", "a", "--device", "gpu!"], "--device"),
    ("trn-lease-negative", TRAINER + ["--name", "a", "--lease-seconds", "-1"], "--lease-seconds"),
    ("trn-metrics-port-70000", TRAINER + ["--name", "a", "--metrics-port", "70000"], "--metrics-port"),
    ("trn-max-trials-0", TRAINER + ["--name", "a", "--max-trials", "0"], "--max-trials"),
    ("trn-checkpoint-seconds-neg", TRAINER + ["--name", "a", "--checkpoint-seconds", "-3"], "--checkpoint-seconds"),
    ("trn-redis-bad-db", TRAINER + ["--name", "a", "--redis-url", "{REDIS}/99999"], "database index 99999"),
    ("trn-redis-bad-scheme", TRAINER + ["--name", "a", "--redis-url", "ftp://x"], "--redis-url"),
    ("trn-name-bad", TRAINER + ["--name", "a b {}", "--redis-url", UNREACHABLE], "name"),
    ("trn-log-level-bogus", TRAINER + ["--name", "a", "--log-level", "LOUD"], "--log-level"),
]

ALL_IDS = [c[0] for c in RUN_CASES] + [c[0] for c in OTHER_CASES]
assert len(ALL_IDS) == len(set(ALL_IDS))


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*")):
        h.update(str(file.relative_to(path)).encode())
        if file.is_file():
            h.update(file.read_bytes())
    return h.hexdigest()


def run_one(argv: list[str], cwd: Path) -> tuple[object, str, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("KUBENAS_REDIS_URL", None)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=LIMIT_S)
        rc: object = proc.returncode
    except subprocess.TimeoutExpired:
        out, err = b"", b""
        rc = "timeout"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever a wrongly accepted case started
        except ProcessLookupError:
            pass
    if rc == "timeout":
        out, err = proc.communicate()
    return rc, (out + b"\n" + err).decode(errors="replace") + "\n\x00" + err.decode(errors="replace"), \
        time.monotonic() - started


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server, for the database-index cases (it has databases 0-15)."""
    server = shutil.which("redis-server")
    assert server, "redis-server is needed (the project's tests use a real one)"
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, redis_url):
    """Runs the selected cases a few at a time; each test then checks its own."""
    work = tmp_path_factory.mktemp("bad-input")
    files = work / "files"
    files.mkdir()
    for name, content in GENOTYPES.items():
        (files / f"{name}.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    (files / "bomb.json").write_text(BOMB)
    (files / "manifest.json").write_text(changed())

    def argv_of(template: list[str], out: Path) -> list[str]:
        argv = []
        for arg in template:
            if arg.startswith("{G:"):
                arg = str(files / f"{arg[3:-1]}.json")
            argv.append(arg.replace("{OUT}", str(out)).replace("{REDIS}", redis_url))
        return argv

    jobs = {}
    selected = {item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})}
    for case_id, manifest, flags, _ in RUN_CASES:
        if case_id not in selected:
            continue
        path = files / f"{case_id}.yaml"
        path.write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
        results = work / "results" / case_id  # an earlier search's results, which must stay as they are
        results.mkdir(parents=True)
        (results / "trials.jsonl").write_text('{"trial": "earlier"}\n')
        (results / "best_genotype.json").write_text(GENOTYPES["good"])
        flags = [f.replace("REDIS", redis_url) for f in flags]
        argv = KUBENAS + ["run", str(path), "--output", str(results), "--no-progress", *flags]
        jobs[case_id] = (argv, results, tree_digest(results))
    for case_id, template, _ in OTHER_CASES:
        if case_id in selected:
            out = work / "out" / case_id
            jobs[case_id] = (argv_of(template, out), None, None)

    def execute(case_id: str):
        argv, results, before = jobs[case_id]
        rc, output, seconds = run_one(argv, work)
        unchanged = results is None or tree_digest(results) == before
        return case_id, (rc, output, seconds, unchanged)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(execute, list(jobs)))


EXPECT = {c[0]: c[3] for c in RUN_CASES} | {c[0]: c[2] for c in OTHER_CASES}


@pytest.mark.parametrize("case", ALL_IDS)
def test_bad_input_is_refused_clearly(case, outcomes):
    rc, output, seconds, unchanged = outcomes[case]
    both, _, stderr = output.partition("\n\x00")
    assert rc != "timeout", f"{case}: still running after {LIMIT_S} s:\n{both[-2000:]}"
    assert rc != 0, f"{case}: accepted (exit 0):\n{both[-2000:]}"
    assert "Traceback" not in both, f"{case}: a traceback instead of a message:\n{both[-3000:]}"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if ": error: " in line or "is not accepted" in line]  # argparse's usage
    assert 1 <= len(lines) <= 3, f"{case}: expected one message, got:\n{stderr[-3000:]}"
    assert EXPECT[case] in stderr, f"{case}: the message does not name {EXPECT[case]!r}:\n{stderr[-2000:]}"
    assert unchanged, f"{case}: the existing results directory was modified"


@pytest.mark.parametrize("hparams, message", [
    ({"epochs": float("inf")}, "genotype.hparams.epochs: Input should be a valid integer"),
    ({"batchSize": 0}, "genotype.hparams.batchSize: Input should be greater than or equal to 1"),
    ({"learningRate": float("nan")}, "genotype.hparams.learningRate: Input should be a finite number"),
    ({"dropout": 0.5}, "genotype.hparams: ['dropout'] are not hyperparameters"),
])
def test_passed_through_hyperparameters_are_checked_with_the_architecture(hparams, message):
    # describe and export validate only the architecture; its hyperparameters must still be usable.
    from kubenas.errors import InvalidGenotype
    from kubenas.spaces import build_space

    space = build_space("nasbench201")
    assert space.validate_architecture({"space": "nasbench201", "cell": OK_CELL, "hparams": {"epochs": 2}})
    with pytest.raises(InvalidGenotype) as err:
        space.validate_architecture({"space": "nasbench201", "cell": OK_CELL, "hparams": hparams})
    assert message in str(err.value)
