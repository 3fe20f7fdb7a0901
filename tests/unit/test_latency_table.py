import json
import random

import pytest
import torch

from kubenas.cli import main
from kubenas.nn import ModelConfig, build_model, count_parameters, multiply_adds
from kubenas.nn.latency_table import (LatencyTableError, NetworkSize, check_prices_space, load_table, make_table,
                                      network_units, parse_table, predict_latency, space_units, unit_module)
from kubenas.spaces import build_space

torch.set_num_threads(1)

SIZES = {
    "nasbench201": NetworkSize(space="nasbench201", resolution=8, in_channels=1, channels=4, cells_per_stage=1),
    "darts": NetworkSize(space="darts", resolution=9, in_channels=3, channels=4, cells_per_stage=1, num_classes=7),
    "nasnet": NetworkSize(space="nasnet", resolution=8, in_channels=1, channels=4, cells_per_stage=2),
}


def _model(genotype, size):
    cfg = ModelConfig(channels=size.channels, cells_per_stage=size.cells_per_stage, num_classes=size.num_classes,
                      in_channels=size.in_channels, stem_multiplier=size.stem_multiplier)
    return build_model(genotype, cfg).eval()


def _unit_multiply_adds(key, size):
    module, shapes = unit_module(key, size)
    if len(shapes) != 1 or not any(True for _ in module.parameters()):
        return 0  # additions, concatenations, pools: no multiply-adds counted
    return multiply_adds(module, shapes[0])


@pytest.mark.parametrize("space_name", sorted(SIZES))
def test_units_are_the_network_exactly_and_the_table_has_them_all(space_name):
    """The decomposition must be the network: same parameters, same multiply-adds at
    the same shapes (so channels and resolutions are right), and every unit a row."""
    size = SIZES[space_name]
    space = build_space(space_name)
    rows = set(space_units(size))
    rng = random.Random(3)
    for _ in range(8):
        genotype = space.sample(rng)
        units = network_units(genotype, size)
        assert set(units) <= rows, set(units) - rows
        model = _model(genotype, size)
        assert sum(count_parameters(unit_module(u, size)[0]) for u in units) == count_parameters(model)
        assert (sum(_unit_multiply_adds(u, size) for u in units)
                == multiply_adds(model, (size.in_channels, size.resolution, size.resolution)))


def test_every_unit_runs_at_its_shape():
    size = SIZES["nasbench201"]
    for key in space_units(size):
        module, shapes = unit_module(key, size)
        with torch.no_grad():
            out = module.eval()(*[torch.randn(2, *s) for s in shapes])
        assert out.shape[0] == 2


def test_prediction_is_the_sum_of_the_genotypes_entries():
    size = SIZES["nasbench201"]
    keys = space_units(size)
    # Distinct powers of two: the sum tells exactly which entries were used, and how often.
    table = make_table(size, "cpu", torch.__version__, {k: 2.0 ** -(i + 1) for i, k in enumerate(keys)}, repeats=1)
    all_conv = {"space": "nasbench201", "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|"
                                                "nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"}
    entries = table["entries"]
    expected = entries["stem(1,4,8)"] + entries["resblock(4,8,8)"] + entries["resblock(8,16,4)"] \
        + entries["nb201head(16,2,10)"] + sum(6 * (entries[f"op(nor_conv_3x3,{c},{h},1)"] + entries[f"add({c},{h})"])
                                               for c, h in ((4, 8), (8, 4), (16, 2)))
    assert predict_latency(table, all_conv) == pytest.approx(expected, rel=1e-12)
    skips = {"space": "nasbench201", "cell": all_conv["cell"].replace("nor_conv_3x3", "skip_connect")}
    assert predict_latency(table, skips) != predict_latency(table, all_conv)
    # a calibrated table scales every sum alike: no ranking changes
    calibrated = dict(table, calibration={"networks": 3, "scale": 1.5})
    assert predict_latency(calibrated, all_conv) == pytest.approx(1.5 * expected, rel=1e-12)


def test_the_command_writes_a_table_that_prices_genotypes(tmp_path, capsys):
    path = tmp_path / "cpu.json"
    path.write_text("an older table\n")
    old_inode = path.stat().st_ino
    code = main(["latency-table", "--device", "cpu", "--space", "nasbench201", "--resolution", "8",
                 "--channels", "4", "--cells-per-stage", "1", "--in-channels", "1", "--repeats", "2",
                 "--batch", "3", "--calibrate", "2", "--output", str(path)])
    assert code == 0
    # Replaced by a rename, not rewritten in place: a search reading the old table never sees half a new one.
    assert path.stat().st_ino != old_inode
    assert not [p.name for p in tmp_path.iterdir() if p.name != "cpu.json"]  # no temporary file left
    table = load_table(str(path))
    assert (table["device"], table["torch"], table["batch"], table["resolution"]) == ("cpu", torch.__version__, 3, 8)
    assert set(table["entries"]) == set(space_units(NetworkSize(resolution=8, in_channels=1, channels=4,
                                                                cells_per_stage=1, batch=3)))
    assert all(v > 0 for v in table["entries"].values())
    assert table["calibration"]["networks"] == 2 and table["calibration"]["scale"] > 0
    genotype = build_space("nasbench201").sample(random.Random(0))
    assert predict_latency(table, genotype) > 0


@pytest.mark.parametrize("args, says", [
    (["--device", "tpu"], "--device: 'tpu' is not accepted"),
    (["--device", "cpu", "--blocks", "3"], "--blocks: does not apply to nasbench201"),
    (["--device", "cpu", "--operations", "sep_conv_3x3"], "--operations: ['sep_conv_3x3'] not in the nasbench201"),
])
def test_the_command_refuses_bad_input_in_one_line(args, says, capsys):
    code = main(["latency-table", "--space", "nasbench201", "--resolution", "8", *args])
    assert code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_cuda_index_this_machine_lacks_is_refused_naming_the_device(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code = main(["latency-table", "--space", "nasbench201", "--resolution", "8", "--device", "cuda:9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--device: cuda:9" in err and "2 CUDA device(s)" in err and "Traceback" not in err


@pytest.mark.parametrize("table_blocks, search_blocks", [(None, 7), (None, 3), (6, None), (5, 5)])
def test_a_table_made_for_other_blocks_per_cell_is_refused(table_blocks, search_blocks):
    # Each table has every unit of its own size, so only the blocks check can tell them apart.
    size = NetworkSize(space="darts", resolution=8, in_channels=1, channels=4, cells_per_stage=1, blocks=table_blocks)
    table = make_table(size, "cpu", "x", {k: 1e-5 for k in space_units(size)}, repeats=1)
    space = build_space({"type": "darts", "blocks": search_blocks})
    if (table_blocks or 4) == (search_blocks or 4):  # darts' default is 4 blocks
        check_prices_space(table, space)
        predict_latency(table, space.sample(random.Random(0)))
        return
    with pytest.raises(LatencyTableError, match=f"for {table_blocks or 4} blocks per cell; the search's "
                                                f"searchSpace.blocks is {search_blocks or 4}"):
        check_prices_space(table, space)


def test_a_table_for_another_size_or_space_is_refused_by_name():
    size = SIZES["nasbench201"]
    table = make_table(size, "cpu", "x", {k: 1e-5 for k in space_units(size, ["nor_conv_1x1", "none"])}, repeats=1)
    genotype = {"space": "nasbench201", "cell": "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"}
    with pytest.raises(LatencyTableError, match=r"no entry for op\(nor_conv_3x3,4,8,1\)"):
        predict_latency(table, genotype)
    darts = build_space("darts").sample(random.Random(0))
    with pytest.raises(LatencyTableError, match="made for the nasbench201 space"):
        predict_latency(table, darts)


@pytest.mark.parametrize("text, says", [
    ("not json", "not JSON"),
    ("[1]", "not a kubenas latency table"),
    (json.dumps({"kind": "kubenas-latency-table", "format": 9, "entries": {"a": 1}}), "format 9 is not accepted"),
    (json.dumps({"kind": "kubenas-latency-table", "format": 1, "entries": {"a": -1}}), "non-negative seconds"),
    (json.dumps({"kind": "kubenas-latency-table", "format": 1, "entries": {"a": 1}, "space": "vit"}),
     "space 'vit' is not accepted"),
    (json.dumps({"kind": "kubenas-latency-table", "format": 1, "entries": {"a": 1}, "channels": "16"}),
     "channels '16' is not accepted"),
    (json.dumps({"kind": "kubenas-latency-table", "format": 1, "entries": {"a": 1}, "calibration": {"scale": -1}}),
     "calibration.scale must be a number above 0"),
    # JSON true is a Python int; a list is not hashable: both refused by name, never a TypeError.
    (json.dumps({"kind": "kubenas-latency-table", "format": 1, "entries": {"a": True}}), "non-negative seconds"),
    (json.dumps({"kind": "kubenas-latency-table", "format": 1, "entries": {"a": 1}, "calibration": {"scale": True}}),
     "calibration.scale must be a number above 0"),
    (json.dumps({"kind": "kubenas-latency-table", "format": 1, "entries": {"a": 1}, "space": ["nasbench201"]}),
     r"space \['nasbench201'\] is not accepted"),
])
def test_unreadable_tables_are_refused_with_the_reason(text, says):
    with pytest.raises(LatencyTableError, match=says):
        parse_table(text, "t.json")
    with pytest.raises(LatencyTableError, match="No such file"):
        load_table("/nonexistent/t.json")
