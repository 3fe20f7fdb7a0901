"""`kubenas bench oneshot` (kubenas/bench/oneshot.py) and DARTS' skip cap in derivation."""

from __future__ import annotations

import csv
import math

import torch

from kubenas.bench.oneshot import parameter_free_share, read_table, run_one, summary
from kubenas.nn.networks import ModelConfig
from kubenas.nn.supernet import build_supernet
from kubenas.oneshot.derive import derive_from_alphas, skip_count
from kubenas.spaces import build_space
from kubenas.spaces.nasbench201 import NB201_OPERATIONS

CELLS = {
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|": 80.0,
    "|avg_pool_3x3~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|avg_pool_3x3~2|": 30.0,
    "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_1x1~2|": 70.0,
}


def test_parameter_free_share_counts_skip_and_none_edges():
    cells = list(CELLS)
    assert parameter_free_share(cells[:1]) == 1 / 6
    assert parameter_free_share(cells[1:2]) == 3 / 6
    assert math.isnan(parameter_free_share([]))


def test_darts_derivation_caps_skip_connections():
    space = build_space("nasbench201")
    net = build_supernet(space, ModelConfig(channels=4, cells_per_stage=1, num_classes=10, in_channels=1))
    # alphas that favour skip_connect on every edge: the collapsed cell DARTS is known for
    cell = torch.zeros(net.arch_shapes()["cell"])
    cell[:, NB201_OPERATIONS.index("skip_connect")] = 3.0
    uncapped = derive_from_alphas(space, {"cell": cell}, k=2)
    capped = derive_from_alphas(space, {"cell": cell}, k=2, max_skips=2)
    assert skip_count(uncapped[0][0]) == 6
    assert [skip_count(g) for g, _ in capped] == [2, 2]
    assert capped[0][1] < uncapped[0][1]  # the most probable cell within the cap, less probable than the argmax


def test_one_seed_of_darts_ranks_the_table_and_reports_its_numbers(tmp_path):
    table_path = tmp_path / "curves.csv"
    with open(table_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "cellstr", "val_acc"])
        writer.writerows([i, c, a] for i, (c, a) in enumerate(CELLS.items()))
    table = read_table(table_path)
    run = run_one("darts", 0, table, epochs=1, standalone_seeds=1)
    assert -1.0 <= run.tau <= 1.0 and -1.0 <= run.tau_accuracy <= 1.0
    assert run.seconds > 0 and 0.0 < run.top_val_acc <= 100.0
    assert skip_count({"cell": run.top_cell}) <= 2  # the default cap
    assert 0.0 <= run.parameter_free_share <= 1.0 and run.arch_entropy < math.log(5)
    text = summary([run])
    assert text.splitlines()[1].startswith("darts") and "± 0.000" in text


def test_the_command_refuses_bad_flags_naming_them(capsys):
    from kubenas.cli import main

    assert main(["bench", "oneshot", "--algorithms", "darts,nasnet"]) == 2
    assert "--algorithms: ['nasnet'] not accepted; choose from enas, darts, spos" in capsys.readouterr().err
    assert main(["bench", "oneshot", "--table", "/nonexistent/curves.csv"]) == 2
    assert "--table /nonexistent/curves.csv: cannot be read" in capsys.readouterr().err
    assert main(["bench", "oneshot", "--cells", "ten"]) == 2
    assert "--cells 'ten': expected START:END" in capsys.readouterr().err
    # --param is checked as a manifest's strategy.parameters: names, types and ranges
    for param, said in [
        ("spos.policySteps=3", "--param spos.policySteps: spos has no parameter 'policySteps'; accepted: ["),
        ("spos.fine_tune_steps=3", "--param spos.fine_tune_steps: did you mean fineTuneSteps?"),
        ("spos.fineTuneSteps=abc", "--param spos.fineTuneSteps: 'abc' is not accepted; spos wants an integer"),
        ("spos.topK=0", "--param spos.topK: 0 is not accepted; spos wants an integer in [1, 100]"),
        ("spos.topK=[1]", "--param spos.topK: [1] is not accepted; expected a number, true/false or a string"),
        ("spos.supernetEpochs=3", "--param spos.supernetEpochs: the supernet's epochs are set with --epochs"),
    ]:
        assert main(["bench", "oneshot", "--algorithms", "spos", "--param", param]) == 2, param
        assert said in capsys.readouterr().err, param
    from kubenas.commands.bench import one_shot_parameters

    assert one_shot_parameters("darts", {"order": 2, "archLearningRate": 0.01}) == {
        "order": 2, "arch_learning_rate": 0.01}
    assert main(["bench", "strategies"]) == 2
    assert "--table is required" in capsys.readouterr().err
