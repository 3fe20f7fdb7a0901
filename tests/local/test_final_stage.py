"""The final stage end to end with `kubenas run`, on real files: an ImageFolder tree of digits
PNGs (a few corrupt files among them), a tiny search, the final stage training its best
architecture again, and the exported TorchScript reloaded and run on the held-out test
images as a user would (float RGB in [0, 1], no preprocessing of ours)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.make_digits_imagefolder import write_digits_imagefolder
from tests.local.support import checkpoint_events, require_redis_server, write_manifest
from tests.support.waiting import wait_for

RESOLUTION = 32
# Digits written (of 1797): 480 to train on, 160 to validate, 160 to test; about a minute on one core.
DIGITS = 800


def write_tree(root: Path) -> dict[str, int]:
    """The digits as an ImageFolder tree of 32x32 PNGs, with unreadable files among the training images."""
    written = write_digits_imagefolder(root, size=RESOLUTION, limit=DIGITS, corrupt=True)
    assert written.corrupt
    return written.images


def held_out_images(root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The readable test images as a user loads them: float RGB in [0, 1], NCHW; labels by class folder."""
    classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / "test" / name).iterdir()):
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            except OSError:
                continue  # the corrupt ones
            images.append(torch.from_numpy(pixels).permute(2, 0, 1))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels), classes


def spec(root: Path, top_k: int = 2) -> dict:
    """Two one-epoch trials at N=1, F=4; then the top k again at F=6 for three epochs (about 0.75
    accuracy: enough to tell a trained network from chance, 0.1)."""
    return {
        "searchSpace": {"type": "nasbench201"},
        "strategy": {"algorithm": "random"},
        "budget": {"maxTrials": 2, "parallelism": 2},
        "training": {"dataset": {"name": "imagefolder", "root": str(root)}, "epochs": 1, "channels": 4,
                     "cellsPerStage": 1, "batchSize": 32},
        "final": {"topK": top_k, "epochs": 3, "channels": 6, "cellsPerStage": 1, "learningRate": 0.1,
                  "auxiliaryHead": False, "dropPath": 0.0},
    }


def test_search_then_final_stage_then_the_exported_model_classifies_the_test_images(tmp_path, clis):
    require_redis_server()
    root = tmp_path / "digits"
    counts = write_tree(root)
    out = tmp_path / "out"
    run = clis("run", str(write_manifest(tmp_path / "s.yaml", "final", spec(root))), "--output", str(out),
               "--no-progress")
    assert run.finish(240) == 0, run.text
    summary = json.loads((out / "summary.json").read_text())
    model = summary["finalModel"]
    assert summary["finished"] and summary["stage"] == "finalTraining" and summary["finishReason"] == "MaxTrialsReached"
    assert summary["trials"]["total"] == 2  # the final trials are counted apart from the search's budget
    assert summary["finalTrials"]["total"] == 2 and summary["finalTrials"]["succeeded"] == 2
    assert model["trial"].startswith("final-") and Path(model["path"]) == out / "final"
    assert f"final model {model['trial']}" in run.stdout and f"test accuracy {model['testAccuracy']:.4f}" in run.stdout

    logs = "".join(p.read_text() for p in (out / "logs").glob("trainer-*.log"))
    assert "not-really.png" in logs and "Traceback" not in logs  # the corrupt files: a logged skip

    # The winner has the best validation accuracy of the final trials.
    final = json.loads((out / "final.json").read_text())
    assert max(t["accuracy"] for t in final["trials"]) == model["validationAccuracy"]
    assert all(t["id"].startswith("final-") for t in final["trials"])
    assert not any(t["id"].startswith("final-") for t in map(json.loads, (out / "trials.jsonl").read_text().splitlines()))

    # The export: trained weights in every format, its preprocessing recorded.
    files = {p.name for p in (out / "final").iterdir()}
    assert {"model.safetensors", "model.torchscript.pt", "model.onnx", "model.json"} <= files
    meta = json.loads((out / "final" / "model.json").read_text())
    assert meta["weights"] == "trained" and meta["final"]["trial"] == model["trial"]
    pre = meta["preprocessing"]
    assert pre["normalisation_inside_model"] and pre["resolution"] == [RESOLUTION, RESOLUTION]
    assert pre["class_names"] == [str(d) for d in range(10)] and len(pre["mean"]) == len(pre["std"]) == 3

    # A user's view: load the TorchScript, give it the test PNGs as they come, count the hits.
    images, labels, classes = held_out_images(root)
    assert model["testImages"] == len(images) == counts["test"]
    scripted = torch.jit.load(str(out / "final" / "model.torchscript.pt"))
    with torch.no_grad():
        predicted = torch.cat([scripted(images[i:i + 7]) for i in range(0, len(images), 7)]).argmax(1)  # any batch
    accuracy = float((predicted == labels).float().mean())
    assert abs(accuracy - model["testAccuracy"]) <= 1 / len(images), (accuracy, model)
    assert accuracy > 0.3  # it learned (10 classes: chance is 0.1)


def test_a_final_stage_interrupted_resumes_its_trials_from_their_checkpoints(tmp_path, clis):
    require_redis_server()
    root = tmp_path / "digits"
    write_tree(root)
    path = write_manifest(tmp_path / "s.yaml", "resume", spec(root, top_k=1))
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress")
    checkpoints = out / "artifacts" / "trials"
    wait_for("a final trial's first epoch checkpointed",
             lambda: any(checkpoints.glob("final-*/epoch-1.json")) or run.proc.poll() is not None, 180)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(90) == 130, run.text
    assert any(e.get("e") == "finalStage" for e in checkpoint_events(out))

    again = clis("run", str(path), "--output", str(out), "--no-progress")
    assert again.finish(180) == 0, again.text
    results = [e for e in checkpoint_events(out) if e.get("e") == "result" and e.get("final")]
    assert len(results) == 1 and results[0]["resumed_from_epoch"] >= 1, results
    assert results[0]["epochs"] == 3
    stages = [e for e in checkpoint_events(out) if e.get("e") == "finalStage"]
    assert len(stages) == 1  # the rerun went on with the stage; it did not begin it again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finalModel"]["trial"] == results[0]["id"] and (out / "final" / "model.torchscript.pt").is_file()
