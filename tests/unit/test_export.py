import importlib.util
import json
import math
import random
import zipfile
from pathlib import Path

import pytest
import torch

from kubenas import export as ex
from kubenas.cli import main
from kubenas.errors import KubenasError
from kubenas.nn import count_parameters
from kubenas.spaces import build_space

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "genotypes"
NASNET_A = json.loads((EXAMPLES / "nasnet-a.json").read_text())
NB201 = {"space": "nasbench201",
         "cell": "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"}
GENOTYPES = {
    "nasnet-a": NASNET_A,
    "nasnet-concat": build_space({"type": "nasnet", "combines": ["add", "concat"]}).sample(random.Random(5)),
    "darts": build_space("darts").sample(random.Random(3)),
    "nasbench201": NB201,
}
TINY = (3, 12, 12)


def _tiny(genotype: dict):
    return ex.build(genotype, ex.plan_size(genotype, cells=1, channels=4, input_shape=TINY), num_classes=5)[0]


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_torchscript_round_trip_gives_the_eager_logits(tmp_path, name):
    concat = GENOTYPES["nasnet-concat"]
    assert any(b["combine"] == "concat" for b in concat["normal"] + concat["reduction"])
    model = _tiny(GENOTYPES[name])
    path = tmp_path / "model.pt"
    diff = ex.export_torchscript(model, torch.randn(2, *TINY), path, {"model.json": '{"k": 1}'})
    assert diff == pytest.approx(0.0, abs=1e-5)
    extra = {"model.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["model.json"]) == {"k": 1}
    # Another batch size and another resolution than the trace's: neither was baked in.
    for x in (torch.randn(3, *TINY), torch.randn(1, 3, 20, 20)):
        with torch.no_grad():
            expected = model(x)
            got = loaded(x)
        assert got.shape == (x.shape[0], 5)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_compound_scaling_follows_efficientnet():
    size = ex.compound_scale(5, 16, 1.0, (3, 32, 32))
    assert (size.cells, size.channels) == (6, 16)  # 5 * 1.2 is 6, not 7; 17.6 rounds to 16 (within 10%)
    assert size.suggested_input_shape == (3, 36, 36)  # 32 * 1.15 = 36.8, to a multiple of 4
    assert size.input_shape == (3, 32, 32)
    size = ex.compound_scale(2, 32, 2.0, (3, 32, 32))
    assert size.cells == math.ceil(2 * 1.2 ** 2)
    assert size.channels == 40 and size.channels % 4 == 0  # 32 * 1.21 = 38.7
    assert ex.compound_scale(6, 30, 0.0, (3, 32, 32)).channels == 30  # phi 0 keeps F as given
    for value in (4.4, 9.68, 17.6, 38.72, 100.0):
        width = ex.round_width(value)
        assert width % 4 == 0 and width >= 0.9 * value and abs(width - value) <= 4


def test_phi_increases_depth_width_and_parameters():
    genotype = NASNET_A
    params, sizes = [], []
    for phi in (0.0, 1.0, 2.0, 3.0):
        size = ex.plan_size(genotype, cells=1, channels=8, phi=phi, input_shape=TINY)
        sizes.append(size)
        params.append(count_parameters(ex.build(genotype, size)[0]))
    assert [s.cells for s in sizes] == [1, 2, 2, 2]
    assert [s.channels for s in sizes] == [8, 8, 12, 12]
    assert params[1] > params[0] and params[2] > params[1]
    assert params[3] == params[2]  # same N and F once rounded
    # Width enters convolutions squared: 12/8 wider is about (12/8)**2 the parameters.
    assert 1.8 < params[2] / params[1] < 2.4


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_penultimate_filters_match_the_built_network(name):
    genotype = GENOTYPES[name]
    model = ex.build(genotype, ex.plan_size(genotype, cells=1, channels=6, input_shape=TINY))[0]
    assert model.classifier.in_features == ex.penultimate_filters(genotype, 6)
    assert ex.channels_for_penultimate(genotype, ex.penultimate_filters(genotype, 6)) == 6


def test_nasnet_a_width_relation():
    # Without a concat list: its five blocks, none consumed inside the cell.
    plain = {k: v for k, v in NASNET_A.items() if k != "concat"}
    assert ex.penultimate_multiplier(plain) == 5
    assert ex.channels_for_penultimate(plain, 640) == 32
    size = ex.plan_size(plain, cells=6, penultimate=640)
    assert (size.cells, size.channels) == (6, 32)
    # As published: the k-2 input and the five blocks, so the paper's 6 @ 768 is N=6, F=32.
    assert ex.penultimate_multiplier(NASNET_A) == 6
    assert ex.penultimate_filters(NASNET_A, 32) == 768
    size = ex.plan_size(NASNET_A, cells=6, penultimate=768)
    assert (size.cells, size.channels) == (6, 32)
    assert (ex.plan_size(NB201).cells, ex.plan_size(NB201).channels) == (5, 16)


def _reference_logits(path: Path, x: torch.Tensor):
    from onnx.reference import ReferenceEvaluator

    return torch.from_numpy(ReferenceEvaluator(str(path)).run(None, {"input": x.numpy()})[0])


@pytest.mark.parametrize("exporter, name", [
    ("legacy", "nasnet-concat"),
    pytest.param("dynamo", "nasbench201", marks=pytest.mark.slow),  # torch.export: about 5-10 s here
])
def test_onnx_export_passes_the_checker_and_computes_the_eager_logits(tmp_path, exporter, name):
    pytest.importorskip("onnx")
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        pytest.skip("the torch.export-based exporter needs onnxscript")
    import onnx

    model = _tiny(GENOTYPES[name])
    path = tmp_path / "model.onnx"
    info = ex.export_onnx(model, torch.randn(2, *TINY), path, exporter, metadata={"kubenas": "{}"})
    assert info["checker"] == "passed"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {p.key: p.value for p in proto.metadata_props}["kubenas"] == "{}"
    assert not list(tmp_path.glob("*.data"))  # weights inside the one file
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(TINY)  # batch free, image fixed
    x = torch.randn(3, *TINY)  # batch is a free dimension
    with torch.no_grad():
        torch.testing.assert_close(_reference_logits(path, x), model(x), rtol=1e-4, atol=1e-4)


def test_an_onnx_exporter_failure_is_one_readable_error(tmp_path, monkeypatch):
    pytest.importorskip("onnx")

    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::made_up\nlong internal trace")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(KubenasError, match=r"^ONNX export failed with torch .*: Unsupported operator aten::made_up$"):
        ex.export_onnx(_tiny(NB201), torch.randn(2, *TINY), tmp_path / "m.onnx", "legacy")


# --- the command ---------------------------------------------------------------------

def _cli(capsys, *argv):
    code = main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_a_results_directory_writes_torchscript_and_model_json(tmp_path, capsys):
    results = tmp_path / "results" / "my-search"
    results.mkdir(parents=True)
    genotype = {**NB201, "hparams": {"learningRate": 0.05}}
    (results / "best_genotype.json").write_text(json.dumps(genotype))
    code, out, err = _cli(capsys, str(results), "-N", "1", "-F", "4", "--phi", "1", "--input", "3x16x16",
                          "--classes", "7", "--auxiliary", "--drop-path", "0.2")
    assert code == 0, err
    summary = json.loads(out)
    export_dir = results / "export"
    assert summary["output"] == str(export_dir)
    assert summary["files"] == ["model.json", "model.torchscript.pt"]
    meta = json.loads((export_dir / "model.json").read_text())
    assert meta["genotype"] == genotype
    assert (meta["cells_per_stage"], meta["channels"], meta["phi"]) == (2, 4, 1.0)
    assert meta["classes"] == 7 and meta["input_shape"] == [3, 16, 16]
    assert meta["suggested_input_shape"] == [3, 20, 20]  # 16 * 1.15 = 18.4, to a multiple of 4
    assert meta["model_config"]["auxiliary"] is True and meta["model_config"]["drop_path"] == 0.2
    assert meta["parameters"] > 0 and meta["multiply_adds"] > 0
    assert meta["parameters_with_auxiliary"] > meta["parameters"]
    assert meta["torch_version"] == torch.__version__
    assert meta["penultimate_filters"] == 16
    loaded = torch.jit.load(str(export_dir / "model.torchscript.pt"))
    assert loaded(torch.randn(2, 3, 20, 20)).shape == (2, 7)
    with zipfile.ZipFile(export_dir / "model.torchscript.pt") as archive:
        assert any(name.endswith("extra/model.json") for name in archive.namelist())


def test_export_by_search_name_and_format_both(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ex, "onnx_exporter", lambda: "legacy")  # the fast exporter; both are tested above
    named = tmp_path / "results" / "cifar"
    named.mkdir(parents=True)
    (named / "best_genotype.json").write_text(json.dumps(GENOTYPES["darts"]))
    code, out, err = _cli(capsys, "cifar", "--format", "both", "-N", "1", "-F", "4", "--input", "3x12x12",
                          "-o", "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.json", "model.onnx", "model.torchscript.pt"]
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["onnx"]["checker"] == "passed"
    assert meta["source"] == str(Path("results") / "cifar" / "best_genotype.json")


def _one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("kubenas: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_readable_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_error(*_cli(capsys, "missing.json"), "missing.json: no such genotype file", "results/missing.json")
    (tmp_path / "empty-run").mkdir()
    _one_line_error(*_cli(capsys, "empty-run"), "empty-run: a directory without best_genotype.json")
    (tmp_path / "results" / "pending").mkdir(parents=True)
    _one_line_error(*_cli(capsys, "pending"), "without best_genotype.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**NASNET_A, "normal": NASNET_A["normal"][:4]}))
    _one_line_error(*_cli(capsys, str(bad)), "genotype.normal: has 4 blocks")
    bad.write_text("{not json")
    _one_line_error(*_cli(capsys, str(bad)), "not valid JSON")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(NB201))
    _one_line_error(*_cli(capsys, str(good), "--phi", "-1"), "--phi: -1.0 is not accepted")
    _one_line_error(*_cli(capsys, str(good), "--input", "3x32"), "--input")
    _one_line_error(*_cli(capsys, str(good), "--cells", "0"), "--cells: 0")
    _one_line_error(*_cli(capsys, str(good), "--drop-path", "1.5", "-N", "1", "-F", "4"), "--drop-path")
    assert not (tmp_path / "good-export").exists()  # nothing written for a bad request


def test_a_failing_onnx_export_keeps_the_torchscript_and_says_so(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")

    def broken(*args, **kwargs):
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(torch.onnx, "export", broken)
    good = tmp_path / "g.json"
    good.write_text(json.dumps(NB201))
    out_dir = tmp_path / "out"
    code, out, err = _cli(capsys, str(good), "--format", "both", "-N", "1", "-F", "4", "--input", "3x12x12",
                          "-o", str(out_dir))
    _one_line_error(code, out, err, "ONNX export failed", "exporter unavailable", "model.torchscript.pt")
    assert (out_dir / "model.torchscript.pt").exists() and (out_dir / "model.json").exists()
    assert not (out_dir / "model.onnx").exists()


@pytest.mark.parametrize("description,fragment", [
    ({"model_config": {"channels": 8, "width_mult": 2}}, "model_config.width_mult: unknown field"),
    ({"model_config": ["not", "a", "mapping"]}, "model_config is not a mapping (got list)"),
    ({"model_config": {"channels": "8"}}, "model_config.channels: '8' is not accepted"),
    ({"model_config": {"auxiliary": 1}}, "model_config.auxiliary: 1 is not accepted"),
    ({"model_config": {"drop_path": 2.0}}, "model_config.drop_path: 2.0 is not accepted"),
    ({"model_config": {"skeleton": "vgg"}}, "model_config.skeleton: 'vgg' is not accepted"),
    ({"model_config": {"channels": 4}, "input_shape": 3}, "input_shape 3 is not accepted"),
    ({"model_config": {"channels": 4}, "preprocessing": [0.5]}, "preprocessing is not a mapping"),
], ids=["unknown-key", "list", "string-int", "int-bool", "drop-path", "skeleton", "input-shape", "preprocessing"])
def test_malformed_metadata_in_a_weights_file_is_one_line_naming_the_file_and_field(tmp_path, capsys,
                                                                                     description, fragment):
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1)}, str(weights), metadata={ex.WEIGHTS_METADATA_KEY: json.dumps(description)})
    genotype = tmp_path / "g.json"
    genotype.write_text(json.dumps(NB201))
    _one_line_error(*_cli(capsys, str(genotype), "--weights", str(weights), "-o", str(tmp_path / "out")),
                    f"--weights: {weights}: the metadata's {fragment}")


# --- sample | describe | train, and what they refuse ----------------------------------------

def _run(capsys, monkeypatch, argv, stdin: bytes | None = None):
    import io
    import sys

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("space, blocks", [("nasnet", 2), ("nasnet", 3), ("darts", 3)])
def test_sample_with_blocks_pipes_into_describe_and_train(capsys, monkeypatch, tmp_path, space, blocks):
    code, sampled, err = _run(capsys, monkeypatch, ["sample", space, "--blocks", str(blocks), "--seed", "1"])
    assert code == 0, err
    genotype = json.loads(sampled)
    assert len(genotype["normal"]) == len(genotype["reduction"]) == blocks
    code, out, err = _run(capsys, monkeypatch, ["describe", "-", "-N", "1", "-F", "4"], stdin=sampled.encode())
    assert code == 0, err
    described = json.loads(out)
    assert described["hash"] == build_space({"type": space, "blocks": blocks}).hash(genotype)
    assert described["parameters"] > 0
    if (space, blocks) == ("nasnet", 2):
        path = tmp_path / "cell.json"
        path.write_text(sampled)
        code, out, err = _run(capsys, monkeypatch, ["train", str(path), "--epochs", "1", "-N", "1", "-F", "4",
                                                    "--train-subset", "64", "--device", "cpu"])
        assert code == 0, err
        assert json.loads(out[out.index("{"):])["status"] == "succeeded"
        code, out, err = _run(capsys, monkeypatch, ["export", str(path), "-N", "1", "-F", "4", "--input", "3x12x12",
                                                    "-o", str(tmp_path / "out")])
        assert code == 0, err
        assert json.loads(out)["architecture_hash"] == described["hash"]


def _refused(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2 and "Traceback" not in err
    assert err.strip().count("\n") == 0, err
    for fragment in fragments:
        assert fragment in err, err


def test_sample_refuses_an_absurd_block_count(capsys, monkeypatch):
    for blocks in ("1000", "0", "-3"):
        _refused(*_run(capsys, monkeypatch, ["sample", "nasnet", "--blocks", blocks]),
                 f"--blocks: {blocks} is not accepted; give 1..10")
    _refused(*_run(capsys, monkeypatch, ["sample", "nasbench201", "--blocks", "3"]), "--blocks: does not apply")


def test_describe_and_train_refuse_bad_genotypes_in_one_line(capsys, monkeypatch, tmp_path):
    genotype = tmp_path / "g.json"
    genotype.write_text(json.dumps(NB201))
    _refused(*_run(capsys, monkeypatch, ["describe", str(genotype), "--input", "3x0x0"]), "--input", "3x0x0")
    binary = tmp_path / "cell.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    _refused(*_run(capsys, monkeypatch, ["describe", str(binary)]), "cell.png", "UTF-8")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    _refused(*_run(capsys, monkeypatch, ["describe", str(deep)]), "deep.json")
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps({**NASNET_A, "space": ["nasnet"]}))
    _refused(*_run(capsys, monkeypatch, ["describe", str(listed)]), "genotype.space: ['nasnet'] is not accepted")
    for hparams, fragment in [('{"epochs": Infinity}', "genotype.hparams.epochs"),
                              ('{"batchSize": 0}', "genotype.hparams.batchSize")]:
        bad = tmp_path / "hp.json"
        bad.write_text(json.dumps(NB201)[:-1] + f', "hparams": {hparams}}}')
        code, out, err = _run(capsys, monkeypatch, ["train", str(bad), "--epochs", "1", "-N", "1", "-F", "4",
                                                    "--train-subset", "64", "--device", "cpu"])
        _refused(code, "", err, fragment)
