"""Bad input at the edge of `kubenas run`: the manifest file and the command line.

Every case runs the real CLI in a subprocess and must be refused before anything
starts: exit status non-zero, no traceback, the field (or file) named, and the
results directory exactly as it was.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from tests.local.support import run_cli, snapshot, tiny_spec

pytestmark = pytest.mark.timeout(180)

HEADER = "apiVersion: kubenas.io/v1alpha1\nkind: ArchitectureSearch\nmetadata: {name: bad}\n"


def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
                                    "metadata": {"name": "bad"}, "spec": tiny_spec(max_trials=2)}))
    return path


def text(content: str | bytes) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / "manifest.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    return make


def with_spec(**overrides) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / "manifest.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
                                        "metadata": {"name": "bad"}, "spec": tiny_spec(max_trials=2, **overrides)}))
        return path

    return make


def alias_bomb(levels: int = 9) -> str:
    """Billion laughs: nine aliases of nine aliases ... of nine strings; 9**9 when expanded."""
    lines = [HEADER + "x:", "  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"spec: {{strategy: {{parameters: {{bomb: *a{levels - 1}}}}}}}")
    return "\n".join(lines) + "\n"


def fifty_megabytes(tmp_path: Path) -> Path:
    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:
        f.write(HEADER + "spec: {}\n")
        f.write(("# " + "x" * 1021 + "\n") * (50 * 1024))
    return path


def npz_file(tmp_path: Path, name: str, make: Callable[[Path], None]) -> str:
    path = tmp_path / name
    make(path)
    return str(path)


def dataset(kind: str) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        if kind == "missing":
            ds = {"name": "npz", "root": str(tmp_path / "nowhere.npz")}
        elif kind == "directory":
            (tmp_path / "adir").mkdir()
            ds = {"name": "npz", "root": str(tmp_path / "adir")}
        elif kind == "not-npz":
            (tmp_path / "data.npz").write_text("these are not arrays\n")
            ds = {"name": "npz", "root": str(tmp_path / "data.npz")}
        elif kind == "cifar-without-root":
            ds = {"name": "cifar10"}
        elif kind.startswith("imagefolder"):  # classes a/ and b/; b/ holds no image
            for name, files in (("a", ["1.png", "2.png"]), ("b", ["notes.txt"])):
                (tmp_path / "images" / name).mkdir(parents=True)
                for file in files:
                    (tmp_path / "images" / name / file).write_bytes(b"\x89PNG")
            ds = {"name": "imagefolder", "root": str(tmp_path / "images")}
            if kind == "imagefolder-small":
                return with_spec(searchSpace={"type": "nasnet"},
                                 training={"dataset": {**ds, "resolution": 16}, "skeleton": "imagenet"})(tmp_path)
        else:  # a validation split of one image
            np.savez(tmp_path / "few.npz", x=np.zeros((12, 8, 8), np.float32), y=np.arange(12) % 10)
            ds = {"name": "npz", "root": str(tmp_path / "few.npz"), "validationFraction": 0.05}
        return with_spec(training={"dataset": ds})(tmp_path)

    return make


# (id, manifest, extra arguments, what stderr must name)
CASES = [
    ("binary-manifest", text(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"), [], ["not UTF-8", "offset 0"]),
    ("alias-bomb", text(alias_bomb()), [], ["expands to more than", "aliases"]),
    ("recursive-alias", text(HEADER + "spec: &s {strategy: {parameters: {x: *s}}}\n"), [], ["recursive alias"]),
    ("json-nested-deep", text("[" * 20000 + "]" * 20000), [], ["nested"]),
    ("yaml-nested-deep", text(HEADER + "spec: " + "{a: " * 200 + "1" + "}" * 200 + "\n"), [], ["nested more than"]),
    ("duplicate-key", text(HEADER + "spec:\n  budget: {maxTrials: 3}\n  budget: {maxTrials: 4}\n"), [],
     ["duplicate key 'budget' at line 6 (first at line 5)"]),
    ("two-searches", text(HEADER + "---\n" + HEADER.replace("bad", "other")), [],
     ["holds 2 ArchitectureSearch documents", "one search per file"]),
    ("fifty-megabytes", fifty_megabytes, [], ["MiB; a manifest may be at most 1 MiB"]),
    ("integer-of-5000-digits", text(HEADER + "spec: {budget: {maxTrials: " + "9" * 5000 + "}}\n"), [],
     ["a value cannot be read"]),
    ("nul-character", text(HEADER + "spec: {strategy: {algorithm: \"r\x00\"}}\n"), [], ["not valid YAML"]),
    ("yaml-syntax", text(HEADER + "spec: {budget: [1, 2}\n"), [], ["not valid YAML", "line 4"]),
    ("not-a-search", text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\nkind: Secret\n"), [],
     ["no document with kind: ArchitectureSearch"]),
    ("a-list", text("- 1\n- 2\n"), [], ["no document with kind: ArchitectureSearch"]),
    ("missing-file", lambda tmp_path: tmp_path / "nothing-here.yaml", [], ["cannot read it", "No such file"]),
    ("directory-as-manifest", lambda tmp_path: tmp_path, [], ["is a directory"]),
    ("several-fields", text(HEADER + "spec: {budget: {maxTrials: 0, parallelism: -1}, training: {epochs: x}}\n"), [],
     ["3 fields are invalid:\n  spec.budget.maxTrials: ", "\n  spec.budget.parallelism: ",
      "\n  spec.training.epochs: Input should be a valid integer (got 'x')"]),
    ("long-value", text(HEADER.replace("name: bad", "name: " + "a" * 100_000)), [],
     ["metadata.name: String should have at most 63 characters"]),
    ("unknown-strategy", with_spec(strategy={"algorithm": "genius"}), [], ["spec.strategy.algorithm"]),
    ("trainers-zero", good, ["--trainers", "0"], ["--trainers", "0 is not accepted; use 1 to 1024"]),
    ("trainers-word", good, ["--trainers", "many"], ["--trainers", "'many' is not a whole number"]),
    ("lease-negative", good, ["--lease-seconds", "-5"], ["--lease-seconds", "-5 is not accepted"]),
    ("lease-nan", good, ["--lease-seconds", "nan"], ["--lease-seconds", "nan is not accepted"]),
    ("threads-negative", good, ["--threads", "-1"], ["--threads", "-1 is not accepted"]),
    ("metrics-port-too-high", good, ["--metrics-port", "70000"], ["--metrics-port", "70000 is not accepted"]),
    ("metrics-port-range", good, ["--metrics-port", "65535", "--trainers", "2"], ["--metrics-port: 65535"]),
    ("device-unknown", good, ["--device", "tpu"], ["--device: 'tpu' is not accepted"]),
    ("device-absent", good, ["--device", "cuda:99"], ["--device: 'cuda:99' is not accepted"]),
    ("redis-url-scheme", good, ["--redis-url", "http://localhost:6379"], ["--redis-url"]),
    ("dataset-missing", dataset("missing"), [], ["training.dataset.root", "does not exist"]),
    ("dataset-directory", dataset("directory"), [], ["training.dataset.root", "is a directory"]),
    ("dataset-not-npz", dataset("not-npz"), [], ["training.dataset.root", "not an .npz"]),
    ("dataset-cifar-without-root", dataset("cifar-without-root"), [], ["training.dataset.root", "needs a root"]),
    ("dataset-tiny-validation", dataset("tiny-validation"), [], ["validation"]),
    ("imagefolder-empty-class", dataset("imagefolder"), [], ["training.dataset.root", "b has no image files"]),
    ("imagefolder-too-small", dataset("imagefolder-small"), [], ["training.dataset.resolution", "at least 32"]),
]


@pytest.mark.parametrize("make, args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_starts(tmp_path, make, args, expected):
    results = tmp_path / "results"
    results.mkdir()
    (results / "earlier.txt").write_text("results of an earlier search\n")
    before = snapshot(results)
    manifest = make(tmp_path)

    began = time.monotonic()
    code, stdout, stderr = run_cli("run", str(manifest), "--output", str(results), "--no-progress", *args)
    seconds = time.monotonic() - began
    assert code != 0, stdout + stderr
    assert "Traceback" not in stderr + stdout, stderr
    for part in expected:
        assert part in stderr, f"{part!r} not in:\n{stderr}"
    assert len(stderr) < 2000, stderr  # shortened before it is rendered
    assert snapshot(results) == before
    assert seconds < 60, f"took {seconds:.0f}s to refuse"


def test_an_output_that_cannot_be_written_is_refused_before_anything_starts(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "earlier.txt").write_text("results of an earlier search\n")
    results.chmod(0o555)
    before = snapshot(results)
    try:
        code, stdout, stderr = run_cli("run", str(good(tmp_path)), "--output", str(results), "--no-progress",
                                       drop_dac=True)
    finally:
        results.chmod(0o755)
    assert code == 2, stdout + stderr
    assert f"--output: {results} is not writable" in stderr and "Traceback" not in stderr
    assert snapshot(results) == before

    file_instead = tmp_path / "a-file"
    file_instead.write_text("x")
    code, _, stderr = run_cli("run", str(good(tmp_path)), "--output", str(file_instead), "--no-progress")
    assert code == 2 and "exists and is not a directory" in stderr and "Traceback" not in stderr


def test_a_binary_genotype_file_is_refused_in_one_line(tmp_path):
    blob = tmp_path / "genotype.json"
    blob.write_bytes(b"\xff\xd8\xff\xe0 not json")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([1, 2]))
    for path, expected in ((blob, "not UTF-8 text"), (deep, "nested too deeply"), (listed, "got a list")):
        code, stdout, stderr = run_cli("describe", str(path))
        assert code != 0 and expected in stderr and "Traceback" not in stderr, stderr


def test_a_redis_database_the_server_lacks_is_refused_before_anything_starts(tmp_path):
    from kubenas.local.redis_server import RedisServer
    from tests.local.support import require_redis_server

    require_redis_server()
    results = tmp_path / "results"
    with RedisServer(tmp_path / "redis") as server:
        code, stdout, stderr = run_cli("run", str(good(tmp_path)), "--output", str(results), "--no-progress",
                                       "--redis-url", f"redis://127.0.0.1:{server.port}/99")
    assert code == 2, stdout + stderr
    assert "--redis-url: the database index 99" in stderr and "Traceback" not in stderr
    assert not results.exists()
