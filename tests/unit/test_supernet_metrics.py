"""The controller relays the supernet's epochs (ARTIFACTS/supernet/epoch-<e>.json, written by
the workers' rank 0) to Prometheus as kubenas_supernet_*, labelled by search."""

from __future__ import annotations

import json

from prometheus_client import REGISTRY

from kubenas_controller.supernet_watch import SupernetWatch


def sample(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_each_checkpointed_epoch_reaches_the_metrics(tmp_path):
    watch = SupernetWatch(tmp_path, poll_seconds=0, search="relay-test")
    (tmp_path / "supernet").mkdir()
    curve = [{"epoch": 1, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.8, "val_acc": 0.4, "arch_entropy": 1.6}]
    (tmp_path / "supernet" / "epoch-1.json").write_text(json.dumps({"epoch": 1, "progress": {"epochs": 3, "curve": curve}}))
    watch.poll()
    assert sample("kubenas_supernet_epoch", search="relay-test") == 1
    assert sample("kubenas_supernet_epochs", search="relay-test") == 3
    assert sample("kubenas_supernet_loss", search="relay-test", split="validation") == 1.8
    assert sample("kubenas_supernet_accuracy", search="relay-test", split="train") == 0.3
    assert sample("kubenas_supernet_architecture_entropy", search="relay-test") == 1.6
    curve.append({"epoch": 2, "train_loss": 1.0, "train_acc": 0.6, "val_loss": 0.9, "val_acc": 0.7, "arch_entropy": 1.2})
    (tmp_path / "supernet" / "epoch-2.json").write_text(json.dumps({"epoch": 2, "progress": {"epochs": 3, "curve": curve}}))
    watch.poll()
    assert sample("kubenas_supernet_epoch", search="relay-test") == 2
    assert sample("kubenas_supernet_loss", search="relay-test", split="train") == 1.0
    assert sample("kubenas_supernet_architecture_entropy", search="relay-test") == 1.2


def test_the_summary_carries_the_supernet_progress_and_kubenas_run_shows_it(tmp_path):
    from kubenas.local.progress import ProgressView
    from kubenas.spec import SearchSummary

    watch = SupernetWatch(tmp_path, poll_seconds=0)
    assert watch.progress() is None  # nothing checkpointed yet
    (tmp_path / "supernet").mkdir()
    curve = [{"epoch": 1, "train_loss": 2.0, "val_loss": 1.8, "val_acc": 0.41, "arch_entropy": 1.55}]
    (tmp_path / "supernet" / "epoch-1.json").write_text(json.dumps({"epoch": 1, "progress": {"epochs": 4, "curve": curve}}))
    watch.poll()
    summary = SearchSummary.model_validate({"stage": "supernet", "supernet": watch.progress()})
    data = summary.model_dump(mode="json", by_alias=True)
    assert data["supernet"] == {"epoch": 1, "epochs": 4, "trainLoss": 2.0, "validationLoss": 1.8,
                                "validationAccuracy": 0.41, "architectureEntropy": 1.55}
    _, text = ProgressView.counts(data)
    assert "supernet training epoch 1/4 val_acc 0.410 entropy 1.550" in text
