"""Trial checkpoints on disk: atomic, pickle-free, checked on load; every kind of bad
checkpoint is refused with a reason, and the trainer then trains from scratch."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
import torch

from kubenas.nn import ModelConfig, build_model
from kubenas.training import checkpoints as ck
from kubenas.training.checkpoints import CheckpointInvalid, TrialCheckpointStore, capture, check_model_fits, restore

torch.set_num_threads(1)
CELL = {"space": "nasbench201",
        "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"}
OTHER = {"space": "nasbench201",
         "cell": "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"}
TINY = ModelConfig(channels=8, cells_per_stage=1, num_classes=10, in_channels=1)


def _training_objects(genotype=CELL, cfg=TINY, steps: int = 3):
    torch.manual_seed(0)
    model = build_model(genotype, cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=3e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):  # real momentum buffers and a moved schedule
        x = torch.randn(4, 1, 8, 8, generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (4,), generator=gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler, gen


def _curve(epochs: int) -> list[dict]:
    return [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_acc": 0.1 * e, "seconds": 1.0,
             "images_per_second": 100.0} for e in range(1, epochs + 1)]


def _checkpoint(epoch: int = 2, genotype=CELL, cfg=TINY, hash_: str = "abc123"):
    model, optimizer, scheduler, gen = _training_objects(genotype, cfg)
    state = capture("", epoch, model, hash_, {"epochs": 5, "learning_rate": 0.05}, optimizer, scheduler, gen,
                    {"curve": _curve(epoch), "best": 0.1 * epoch})
    return replace(state, genotype=genotype), (model, optimizer, scheduler, gen)


@pytest.fixture()
def store(tmp_path: Path) -> TrialCheckpointStore:
    return TrialCheckpointStore(tmp_path / "artifacts")


def test_a_saved_checkpoint_reads_back_exactly(store):
    state, (model, optimizer, scheduler, gen) = _checkpoint(epoch=2)
    path = store.save("t-1", 2, state)
    assert path == store.trials / "t-1" / "epoch-2.json"
    back = store.latest("t-1", "abc123")
    assert back.epoch == 2 and back.step == 0 and back.genotype == CELL
    assert back.genotype_hash == "abc123" and back.train_config == {"epochs": 5, "learning_rate": 0.05}
    assert [c["epoch"] for c in back.curve] == [1, 2]
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.model[name], tensor), name
    assert back.optimizer_tensors and all(k.endswith("/momentum_buffer") for k in back.optimizer_tensors)
    assert back.scheduler["last_epoch"] == 3
    assert torch.equal(back.rng_tensors["generator"], gen.get_state())
    assert back.rng["python"][0] == 3 and back.rng["numpy"][0] == "MT19937"

    # Restoring into fresh objects gives the same weights, optimizer, schedule and random streams.
    model2, optimizer2, scheduler2, gen2 = _training_objects(steps=0)
    restore(back, model2, optimizer2, scheduler2, gen2)
    for name, tensor in model.state_dict().items():
        assert torch.equal(model2.state_dict()[name], tensor), name
    assert scheduler2.last_epoch == 3 and scheduler2.get_last_lr() == scheduler.get_last_lr()
    buffers = [optimizer2.state[p]["momentum_buffer"] for p in model2.parameters()]
    assert all(torch.equal(a, optimizer.state[p]["momentum_buffer"]) for a, p in zip(buffers, model.parameters()))
    assert torch.equal(torch.rand(3, generator=gen2), torch.rand(3, generator=gen))


def test_files_are_safetensors_and_json_with_no_pickle(store):
    state, _ = _checkpoint()
    store.save("t-1", 2, state)
    files = sorted(p.name for p in (store.trials / "t-1").iterdir())
    assert files == ["epoch-2.json", "epoch-2.safetensors"]  # no temporary names left behind
    meta = json.loads((store.trials / "t-1" / "epoch-2.json").read_text())
    assert meta["format"] == ck.FORMAT and meta["tensors"]["file"] == "epoch-2.safetensors"
    data = (store.trials / "t-1" / "epoch-2.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert json.loads(data[8:8 + header])  # the safetensors header is JSON
    assert b"\x80\x04" not in data[:2] and len(data) == meta["tensors"]["bytes"]
    source = Path(ck.__file__).read_text()
    assert "torch.load(" not in source and "import pickle" not in source


def test_a_newer_checkpoint_replaces_the_older_one(store):
    for epoch in (1, 2, 3):
        state, _ = _checkpoint(epoch=epoch)
        store.save("t-1", epoch, state)
    assert [s[:2] for s in store.stems("t-1")] == [(3, 0)]
    mid = replace(_checkpoint(epoch=3)[0], step=7)
    store.save("t-1", 3, mid)
    assert [s[:2] for s in store.stems("t-1")] == [(3, 7)]
    assert store.latest("t-1").step == 7


def test_tensors_written_without_their_json_are_never_read(store):
    """A crash between the two files: the half-written newer checkpoint is invisible."""
    state, _ = _checkpoint(epoch=1)
    store.save("t-1", 1, state)
    (store.trials / "t-1" / "epoch-2.safetensors").write_bytes(b"half a file")
    (store.trials / "t-1" / ".epoch-2.json.tmp-1-abc").write_bytes(b'{"format": "kubenas-trial')
    assert store.latest("t-1").epoch == 1


def test_a_truncated_tensors_file_is_refused(store):
    state, _ = _checkpoint()
    store.save("t-1", 2, state)
    path = store.trials / "t-1" / "epoch-2.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointInvalid, match="bytes") as err:
        store.latest("t-1")
    assert err.value.reason == "truncated"


def test_a_flipped_byte_is_refused(store):
    state, _ = _checkpoint()
    store.save("t-1", 2, state)
    path = store.trials / "t-1" / "epoch-2.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointInvalid, match="sha256") as err:
        store.latest("t-1")
    assert err.value.reason == "corrupt"


@pytest.mark.parametrize("mangle", [
    lambda text: text[: len(text) // 2],  # truncated JSON
    lambda text: "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),  # not UTF-8
    lambda text: "[]",
    lambda text: text.replace('"epoch":2', '"epoch":"two"'),
    lambda text: text.replace('"format":"kubenas-trial-checkpoint/1"', '"format":"other"'),
    lambda text: text.replace('"sha256":"', '"sha256":"0'),
    lambda text: "[" * 100_000,
], ids=["truncated", "binary", "not-an-object", "epoch-type", "format", "sha256", "deep"])
def test_corrupt_metadata_is_refused(store, mangle):
    state, _ = _checkpoint()
    store.save("t-1", 2, state)
    path = store.trials / "t-1" / "epoch-2.json"
    path.write_bytes(mangle(path.read_text()).encode("latin-1"))
    with pytest.raises(CheckpointInvalid) as err:
        store.latest("t-1")
    assert err.value.reason == "corrupt"
    assert "t-1" in str(err.value)


def test_a_curve_that_does_not_match_the_epoch_is_refused(store):
    state, _ = _checkpoint(epoch=2)
    store.save("t-1", 2, replace(state, progress={"curve": _curve(1)}))
    with pytest.raises(CheckpointInvalid, match="curve"):
        store.latest("t-1")


def test_missing_directory_and_files(store):
    assert store.latest("t-1") is None  # a fresh trial: nothing to resume, not an error
    with pytest.raises(CheckpointInvalid, match="no directory") as err:
        store.latest("t-1", required=True)
    assert err.value.reason == "missing"
    with pytest.raises(CheckpointInvalid) as err:
        store.load("t-1", 3)
    assert err.value.reason == "missing"
    state, _ = _checkpoint()
    store.save("t-1", 2, state)
    (store.trials / "t-1" / "epoch-2.safetensors").unlink()
    with pytest.raises(CheckpointInvalid, match="missing") as err:
        store.load("t-1", 2)
    assert err.value.reason == "missing"


def test_another_genotype_or_trial_is_refused(store):
    state, _ = _checkpoint(hash_="abc123")
    store.save("t-1", 2, state)
    with pytest.raises(CheckpointInvalid, match="genotype") as err:
        store.latest("t-1", genotype_hash="fff000")
    assert err.value.reason == "mismatch"
    # A directory renamed by hand: the metadata names another trial.
    (store.trials / "t-1").rename(store.trials / "t-2")
    with pytest.raises(CheckpointInvalid, match="written for trial") as err:
        store.latest("t-2")
    assert err.value.reason == "mismatch"


@pytest.mark.parametrize("genotype,cfg", [(OTHER, TINY), (CELL, replace(TINY, channels=16)),
                                          (CELL, replace(TINY, cells_per_stage=2))],
                         ids=["other-cell", "wider", "deeper"])
def test_shapes_that_do_not_fit_are_refused_and_the_model_is_left_alone(store, genotype, cfg):
    state, _ = _checkpoint(genotype=CELL, cfg=TINY)
    store.save("t-1", 2, state)
    back = store.latest("t-1")
    torch.manual_seed(5)
    model = build_model(genotype, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointInvalid) as err:
        restore(back, model, optimizer)
    assert err.value.reason == "shape"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_an_optimizer_buffer_of_the_wrong_shape_is_refused(store):
    state, _ = _checkpoint()
    key = sorted(state.optimizer_tensors)[0]
    state.optimizer_tensors[key] = torch.zeros(3, 3, 3)
    store.save("t-1", 2, state)
    model, optimizer, scheduler, gen = _training_objects(steps=0)
    with pytest.raises(CheckpointInvalid, match="optimizer buffer") as err:
        restore(store.latest("t-1"), model, optimizer, scheduler, gen)
    assert err.value.reason == "shape"


def test_a_generator_state_of_another_device_resumes_with_a_reseeded_batch_order(store, caplog):
    state, (model, *_) = _checkpoint()
    state.rng_tensors["generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's: seed and offset
    store.save("t-1", 2, state)
    draws = []
    for _ in range(2):
        model2, optimizer2, scheduler2, gen2 = _training_objects(steps=0)
        with caplog.at_level(logging.INFO, logger="kubenas.checkpoints"):
            restore(store.latest("t-1"), model2, optimizer2, scheduler2, gen2)  # not refused
        assert all(torch.equal(model2.state_dict()[k], v) for k, v in model.state_dict().items())
        assert scheduler2.last_epoch == 3
        draws.append(torch.rand(3, generator=gen2))
    assert torch.equal(draws[0], draws[1])  # re-seeded deterministically, from (seed, epoch, step)
    assert not torch.equal(draws[0], torch.rand(3, generator=torch.Generator().manual_seed(1)))
    assert "generator is of another device; re-seeded" in caplog.text


@pytest.mark.parametrize("damage", [
    lambda s: s.rng_tensors.__setitem__("generator", torch.zeros(4, dtype=torch.float32)),
    lambda s: s.rng_tensors.__setitem__("torch_cpu", torch.zeros(16, dtype=torch.uint8)),
    lambda s: s.rng.__setitem__("python", [3, [1, 2, 3], None]),
    lambda s: s.rng.__setitem__("numpy", ["MT19937", [1, 2, 3], 0, 0, 0.0]),
], ids=["generator-not-bytes", "torch-cpu-size", "python-rng", "numpy-rng"])
def test_a_bad_random_state_is_refused_before_anything_changes(store, damage):
    state, _ = _checkpoint()
    damage(state)
    store.save("t-1", 2, state)
    model, optimizer, scheduler, gen = _training_objects(steps=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointInvalid) as err:
        restore(store.latest("t-1"), model, optimizer, scheduler, gen)
    assert err.value.reason == "corrupt"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert scheduler.last_epoch == 0 and not optimizer.state


def test_check_model_fits_names_the_difference():
    state, _ = _checkpoint()
    check_model_fits(state, build_model(CELL, TINY))
    with pytest.raises(CheckpointInvalid, match="shapes do not fit"):
        check_model_fits(state, build_model(CELL, replace(TINY, channels=12)))


def test_retention_keeps_only_what_is_named_and_reports_bytes(store):
    state, _ = _checkpoint()
    for trial_id in ("a", "b", "c"):
        store.save(trial_id, 2, state)
    sizes = {t: sum(p.stat().st_size for p in (store.trials / t).iterdir()) for t in ("a", "b", "c")}
    assert store.bytes_used() == sum(sizes.values()) > 0 and store.trial_ids() == ["a", "b", "c"]
    freed = store.retain(["b", "not-there"])
    assert freed == sizes["a"] + sizes["c"] and store.trial_ids() == ["b"] and store.bytes_used() == sizes["b"]
    assert store.delete("b") == sizes["b"] and store.bytes_used() == 0
    assert store.retain([]) == 0


def test_trial_ids_that_are_not_plain_names_are_refused(store):
    state, _ = _checkpoint()
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="trial id"):
            store.save(bad, 1, state)


# --- the trainer's side: a bad checkpoint is logged, counted and removed; training starts over --------------

class _Claim:
    def __init__(self, trial_id: str):
        from kubenas.queue.messages import TrialMessage
        from kubenas.spec import TrainingSpec

        self.trial = TrialMessage(search="ns/s", trial_id=trial_id, genotype=CELL, epochs=5,
                                  training=TrainingSpec())
        self.entry_id, self.attempt, self.reclaimed = "1-0", 2, True


@pytest.fixture()
def trainer(tmp_path: Path):
    import redis

    from kubenas.queue.keys import SearchKeys
    from kubenas_trainer.trainer import Trainer, TrainerOptions

    # No Redis is reached: only the checkpoint steps are called.
    return Trainer(redis.Redis(port=1), SearchKeys("ns", "s"),
                   TrainerOptions(consumer="t0", artifacts=str(tmp_path / "artifacts")))


def _invalid_count(reason: str) -> float:
    from kubenas import metrics

    return metrics.TRIAL_CHECKPOINTS_INVALID.labels("ns/s", reason)._value.get()


@pytest.mark.parametrize("damage,reason", [
    (lambda d: (d / "epoch-2.safetensors").write_bytes((d / "epoch-2.safetensors").read_bytes()[:50]), "truncated"),
    (lambda d: (d / "epoch-2.json").write_text("{not json"), "corrupt"),
    (lambda d: (d / "epoch-2.safetensors").unlink(), "missing"),
], ids=["truncated", "corrupt-json", "missing-tensors"])
def test_the_trainer_counts_logs_and_removes_a_bad_checkpoint(trainer, caplog, damage, reason):
    state, _ = _checkpoint(hash_="h")
    trainer.store.save("t-9", 2, state)
    damage(trainer.store.trials / "t-9")
    before = _invalid_count(reason)
    with caplog.at_level(logging.WARNING, logger="kubenas.trainer"):
        assert trainer._own_checkpoint(_Claim("t-9"), "h") is None
    assert _invalid_count(reason) == before + 1
    assert f"checkpoint unusable ({reason}" in caplog.text and "training it from scratch" in caplog.text
    assert not (trainer.store.trials / "t-9").exists()  # not found again on the next attempt


def test_the_trainer_resumes_a_good_checkpoint_and_refuses_another_genotypes(trainer, caplog):
    state, _ = _checkpoint(hash_="h")
    trainer.store.save("t-9", 2, state)
    with caplog.at_level(logging.INFO, logger="kubenas.trainer"):
        assert trainer._own_checkpoint(_Claim("t-9"), "h").epoch == 2
    assert "resuming trial t-9 from its checkpoint after epoch 2" in caplog.text
    before = _invalid_count("mismatch")
    assert trainer._own_checkpoint(_Claim("t-9"), "other") is None
    assert _invalid_count("mismatch") == before + 1


def test_a_save_that_fails_is_counted_and_training_goes_on(trainer, tmp_path):
    from kubenas import metrics

    state, _ = _checkpoint(hash_="h")
    trainer.store.trials.parent.mkdir(parents=True, exist_ok=True)
    trainer.store.trials.write_text("a file where the directory should be")
    before = metrics.TRIAL_CHECKPOINT_ERRORS.labels("ns/s")._value.get()
    trainer._save(_Claim("t-9"), CELL, "h", 1, state)  # no exception
    assert metrics.TRIAL_CHECKPOINT_ERRORS.labels("ns/s")._value.get() == before + 1


# --- the artifact volume in a cluster: generated from spec.artifacts ---------------------------------------

def _search(**artifacts):
    from kubenas.manifest import parse_manifest

    return parse_manifest({"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
                           "metadata": {"name": "s1", "namespace": "research"},
                           "spec": {"artifacts": artifacts} if artifacts else {}})


def _pods(manifest):
    from kubenas_operator import builders as b

    ref = b.SearchRef(name="s1", namespace="research", uid="u-1", generation=1)
    images = b.Images(controller="c:1", trainer="t:1")
    job = b.build_controller_job_spec(ref, manifest, images)["spec"]["template"]["spec"]
    trainers = b.build_trainer_deployment_spec(ref, manifest, images, 2)["spec"]["template"]["spec"]
    return ref, job, trainers


def test_artifacts_off_by_default_adds_nothing():
    from kubenas_operator import builders as b

    manifest = _search()
    ref, job, trainers = _pods(manifest)
    assert b.build_artifacts_pvc_spec(ref, manifest) is None
    for pod in (job, trainers):
        assert "artifacts" not in [v["name"] for v in pod["volumes"]]
        assert "KUBENAS_ARTIFACTS" not in [e["name"] for e in pod["containers"][0]["env"]]


def test_artifacts_make_a_readwritemany_claim_owned_by_the_search_and_mounted_by_every_pod():
    from kubenas_operator import builders as b

    manifest = _search(enabled=True, checkpointSeconds=120)
    ref, job, trainers = _pods(manifest)
    pvc = b.build_artifacts_pvc_spec(ref, manifest, b.ArtifactDefaults(size="50Gi", storage_class_name="nfs"))
    assert pvc["metadata"]["name"] == "kubenas-s1-artifacts"
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == "u-1"  # deleted with the search
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}},
                           "storageClassName": "nfs"}
    for pod in (job, trainers):
        assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "kubenas-s1-artifacts"}} in pod["volumes"]
        container = pod["containers"][0]
        assert {"name": "artifacts", "mountPath": b.ARTIFACTS_DIR} in container["volumeMounts"]
        assert {"name": "KUBENAS_ARTIFACTS", "value": b.ARTIFACTS_DIR} in container["env"]
        assert pod["securityContext"]["fsGroup"] == b.IMAGE_GID
    assert {"name": "KUBENAS_CHECKPOINT_SECONDS", "value": "120"} in trainers["containers"][0]["env"]


def test_the_manifest_overrides_the_charts_defaults_or_names_its_own_claim():
    from kubenas_operator import builders as b

    manifest = _search(enabled=True, size="5Gi", storageClassName="cephfs")
    ref, _, _ = _pods(manifest)
    pvc = b.build_artifacts_pvc_spec(ref, manifest, b.ArtifactDefaults(size="50Gi", storage_class_name="nfs"))
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi" and pvc["spec"]["storageClassName"] == "cephfs"
    assert "storageClassName" not in b.build_artifacts_pvc_spec(ref, _search(enabled=True))["spec"]

    shared = _search(enabled=True, existingClaim="team-checkpoints")
    ref, job, trainers = _pods(shared)
    assert b.build_artifacts_pvc_spec(ref, shared) is None  # not created, so not deleted with the search
    for pod in (job, trainers):
        assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "team-checkpoints"}} in pod["volumes"]


@pytest.mark.parametrize("artifacts,field", [({"size": "lots"}, "size"), ({"checkpointSeconds": 1}, "checkpointSeconds"),
                                             ({"existingClaim": "Bad_Name"}, "existingClaim")])
def test_bad_artifact_settings_are_refused_naming_the_field(artifacts, field):
    from kubenas.errors import InvalidSpec

    with pytest.raises(InvalidSpec, match=field):
        _search(**artifacts)


def test_the_charts_defaults_reach_the_operator_settings():
    from kubenas_operator.settings import OperatorSettings

    s = OperatorSettings.from_env({"KUBENAS_DEFAULT_ARTIFACTS_SIZE": "20Gi",
                                   "KUBENAS_DEFAULT_ARTIFACTS_STORAGE_CLASS": "efs"})
    assert (s.artifacts_size, s.artifacts_storage_class) == ("20Gi", "efs")
    assert (OperatorSettings.from_env({}).artifacts_size, OperatorSettings.from_env({}).artifacts_storage_class) == \
        ("10Gi", None)
    with pytest.raises(ValueError, match="KUBENAS_DEFAULT_ARTIFACTS_SIZE"):
        OperatorSettings.from_env({"KUBENAS_DEFAULT_ARTIFACTS_SIZE": "big"})
    values = yaml.safe_load((Path(__file__).resolve().parents[2] / "helm/kubenas/values.yaml").read_text())
    assert values["searchDefaults"]["artifacts"] == {"size": "10Gi", "storageClassName": ""}


def test_what_is_kept_in_flight_parents_strategy_needs_and_top_k():
    from kubenas.training.checkpoints import checkpoints_to_keep

    rewards = {"t1": 0.5, "t2": 0.9, "t3": 0.7, "t4": 0.1}
    keep = checkpoints_to_keep({"t7": "t4", "t8": None}, rewards, needed=["t1"], top_k=2)
    assert keep == {"t7", "t8", "t4", "t1", "t2", "t3"}
    assert checkpoints_to_keep({}, rewards) == set()
    assert checkpoints_to_keep({}, {"a": 0.5, "b": 0.5, "c": 0.1}, top_k=1) == {"a"}  # ties: by id


@pytest.mark.parametrize("flags,message", [
    (["--checkpoint-seconds", "0"], "--checkpoint-seconds: 0 is not accepted"),
    (["--checkpoint-seconds", "nan"], "--checkpoint-seconds: nan is not accepted"),
    (["--artifacts", ""], "--artifacts: an empty path is not accepted"),
    (["--artifacts", "{file}/sub"], "cannot create the directory"),
], ids=["zero", "nan", "empty", "under-a-file"])
def test_bad_checkpoint_flags_are_refused_in_one_line(tmp_path, capsys, flags, message):
    from kubenas_trainer.main import parse_args, run

    (tmp_path / "file").write_text("not a directory")
    flags = [f.replace("{file}", str(tmp_path / "file")) for f in flags]
    assert run(parse_args(["--name", "s", "--metrics-port", "-1", *flags])) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_the_artifacts_flag_and_env_reach_the_trainer(tmp_path, monkeypatch):
    from kubenas_trainer.main import check_args, parse_args

    monkeypatch.setenv("KUBENAS_ARTIFACTS", str(tmp_path / "store"))
    monkeypatch.setenv("KUBENAS_CHECKPOINT_SECONDS", "45")
    args = parse_args(["--name", "s"])
    check_args(args)
    assert (args.artifacts, args.checkpoint_seconds) == (str(tmp_path / "store"), 45.0)
    assert (tmp_path / "store").is_dir()  # created, writable


def _train_claim(trial_id: str, genotype: dict, epochs: int = 2):
    from kubenas.queue.messages import TrialMessage
    from kubenas.spec import TrainingSpec

    claim = _Claim(trial_id)
    training = TrainingSpec.model_validate({"epochs": epochs, "channels": 4, "cellsPerStage": 1,
                                            "dataset": {"name": "digits", "trainSubset": 200}})
    claim.trial = TrialMessage(search="ns/s", trial_id=trial_id, genotype=genotype, epochs=epochs, training=training)
    claim.attempt, claim.reclaimed = 1, False
    return claim


def test_a_checkpoint_that_does_not_fit_the_genotype_is_never_loaded(trainer, caplog):
    """Real training: a checkpoint that passes the file checks (its genotype hash is the trial's)
    but holds another network's weights: the trial trains from scratch, counted and logged."""
    from kubenas.spaces import space_of

    first = trainer._train(_train_claim("t-5", OTHER, epochs=2))
    assert first.status == "succeeded" and first.resumed_from_epoch is None
    meta_path = trainer.store.trials / "t-5" / "epoch-2.json"
    meta = json.loads(meta_path.read_text())
    meta["genotype_hash"] = space_of(CELL).hash(CELL)
    meta_path.write_text(json.dumps(meta))
    before = _invalid_count("shape")
    with caplog.at_level(logging.INFO, logger="kubenas.trainer"):
        outcome = trainer._train(_train_claim("t-5", CELL, epochs=2))
    assert outcome.status == "succeeded" and outcome.resumed_from_epoch is None and outcome.epochs == 2
    assert _invalid_count("shape") == before + 1
    assert "checkpoint unusable (shape" in caplog.text
    fresh = trainer.store.latest("t-5", space_of(CELL).hash(CELL))
    check_model_fits(fresh, build_model(CELL, ModelConfig(channels=4, cells_per_stage=1, in_channels=1)))
    assert fresh.epoch == 2


def test_a_trial_interrupted_after_epoch_1_resumes_and_ends_as_if_never_interrupted(trainer, monkeypatch):
    """Real training: continued from its epoch-1 checkpoint, a trial reaches exactly the curve
    of the same trial trained without a break (CPU, same seed): model, optimizer, schedule and
    random streams all came back."""
    import threading

    whole = trainer._train(_train_claim("t-6", CELL, epochs=3))
    report_epoch = trainer._on_epoch

    def interrupt_after_first(claim, report):
        if report.epoch == 1:
            trainer.interrupt.set()  # as SIGTERM does: TrialInterrupted at the next batch
        return report_epoch(claim, report)

    monkeypatch.setattr(trainer, "_on_epoch", interrupt_after_first)
    with pytest.raises(Exception) as err:
        trainer._train(_train_claim("t-7", CELL, epochs=3))
    assert type(err.value).__name__ == "TrialInterrupted"
    assert trainer.store.latest("t-7").epoch == 1
    monkeypatch.setattr(trainer, "_on_epoch", report_epoch)
    trainer.interrupt = threading.Event()
    resumed = trainer._train(_train_claim("t-7", CELL, epochs=3))
    assert resumed.resumed_from_epoch == 1 and resumed.attempts == 2 and resumed.epochs == 3
    assert resumed.curve == whole.curve and resumed.reward == whole.reward


def test_retention_keeps_the_best_k_it_was_told_of_and_prunes_the_rest(store):
    from kubenas.training.checkpoints import CheckpointRetention

    state, _ = _checkpoint()
    for trial_id in ("a", "b", "c", "d", "e"):
        store.save(trial_id, 2, state)
    retention = CheckpointRetention(store, top_k=2, every_seconds=10)
    for trial_id, reward in (("a", 0.2), ("b", 0.9), ("c", 0.5), ("d", None)):
        retention.note(trial_id, reward)
    assert retention.best == {"b": 0.9, "c": 0.5}
    assert retention.due(0.0)
    freed = retention.prune({"e": "a"}, needed=[], now=100.0)  # e in flight, inheriting from a
    assert freed > 0 and store.trial_ids() == ["a", "b", "c", "e"]
    assert not retention.due(105.0) and retention.due(110.0)


def test_the_trial_log_records_where_a_result_resumed_from_and_its_attempts():
    from kubenas.queue.messages import ResultMessage, TrialMessage
    from kubenas.search_state import SearchState, Verdict
    from kubenas.spec import BudgetSpec, TrainingSpec
    from kubenas.strategies.base import Trial

    state = SearchState(BudgetSpec(max_trials=2, parallelism=1), lambda trial, created: TrialMessage(
        search="ns/s", trial_id=trial.id, genotype=trial.genotype, epochs=5, training=TrainingSpec(), created=created))
    state.create(Trial(id="t1", genotype=CELL), "h", now=1.0)
    msg = ResultMessage(search="ns/s", trial_id="t1", trainer="b", attempt=2, status="succeeded", reward=0.9,
                        curve=[0.5, 0.7, 0.8, 0.85, 0.9], epochs=5, resumed_from_epoch=2, attempts=2)
    event = state.apply_result(msg, Verdict.of(msg), 0.9, now=2.0)
    assert (event["resumed_from_epoch"], event["attempts"]) == (2, 2)
    fresh = ResultMessage(search="ns/s", trial_id="t2", trainer="a", attempt=1, status="succeeded", reward=0.5,
                          curve=[0.5], epochs=1)
    assert (fresh.resumed_from_epoch, fresh.attempts) == (None, 1)


def test_a_warm_start_names_its_parent():
    from kubenas.queue.messages import TrialMessage
    from kubenas.spec import TrainingSpec

    with pytest.raises(ValueError, match="warm_start needs parent_trial_id"):
        TrialMessage(search="ns/s", trial_id="t2", genotype=CELL, epochs=5, training=TrainingSpec(), warm_start="inherit")
    message = TrialMessage(search="ns/s", trial_id="t2", genotype=CELL, epochs=5, training=TrainingSpec(),
                           parent_trial_id="t1", warm_start="resume")
    assert TrialMessage.model_validate_json(message.encode()).warm_start == "resume"


def _child_claim(trial_id: str, genotype: dict, parent: str, warm_start: str):
    from kubenas.queue.messages import TrialMessage
    from kubenas.spec import TrainingSpec

    claim = _Claim(trial_id)
    claim.trial = TrialMessage(search="ns/s", trial_id=trial_id, genotype=genotype, epochs=2,
                               training=TrainingSpec(), parent_trial_id=parent, warm_start=warm_start)
    return claim


def test_warm_starts_load_the_parents_weights_or_start_fresh(trainer, caplog):
    state, (parent_model, *_) = _checkpoint(genotype=CELL, hash_="h")
    trainer.store.save("p-1", 2, state)

    child = build_model(CELL, TINY)  # "resume": the same architecture, all the weights
    trainer._warm_start(_child_claim("c-1", CELL, "p-1", "resume"))(child)
    assert all(torch.equal(child.state_dict()[k], v) for k, v in parent_model.state_dict().items())

    mutated = dict(CELL, cell=CELL["cell"].replace("skip_connect~0", "avg_pool_3x3~0"))
    torch.manual_seed(1)
    child = build_model(mutated, TINY)  # "inherit": what is unchanged is copied
    with caplog.at_level(logging.INFO, logger="kubenas.trainer"):
        trainer._warm_start(_child_claim("c-2", mutated, "p-1", "inherit"))(child)
    assert "inherited from p-1 (epoch 2)" in caplog.text
    stem = [k for k in child.state_dict() if k.startswith("stem")]
    assert stem and all(torch.equal(child.state_dict()[k], parent_model.state_dict()[k]) for k in stem)

    before = _invalid_count("missing")  # a parent whose checkpoint is gone: fresh weights, counted
    trainer._warm_start(_child_claim("c-3", CELL, "gone", "resume"))(build_model(CELL, TINY))
    assert _invalid_count("missing") == before + 1
    before = _invalid_count("shape")  # a "resume" whose architecture differs: refused, fresh weights
    trainer._warm_start(_child_claim("c-4", OTHER, "p-1", "resume"))(build_model(OTHER, TINY))
    assert _invalid_count("shape") == before + 1
