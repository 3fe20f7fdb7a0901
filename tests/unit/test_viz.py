import json
import random
from pathlib import Path

import pytest
from matplotlib.image import imread

from kubenas.errors import InvalidGenotype
from kubenas.spaces import build_space
from kubenas.spaces.nasnet import unused_blocks
from kubenas.viz import cell_plans, completion_order, draw_cells, plot_rewards

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "genotypes"
NASNET_A = json.loads((EXAMPLES / "nasnet-a.json").read_text())
HPARAMS = [
    {"name": "learningRate", "type": "float", "low": 1e-3, "high": 0.1, "log": True},
    {"name": "batchSize", "type": "categorical", "choices": [32, 64, 128]},
]


def _genotypes() -> dict[str, dict]:
    return {
        "nasnet-a": NASNET_A,
        "nasnet-concat-hparams": build_space(
            {"type": "nasnet", "combines": ["concat"], "hyperparameters": HPARAMS}).sample(random.Random(5)),
        "darts": build_space("darts").sample(random.Random(3)),
        "nasbench201": {"space": "nasbench201",
                        "cell": "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"},
    }


GENOTYPES = _genotypes()


def _png(path: Path, size: tuple[int, int]):
    assert path.stat().st_size > 1000
    image = imread(path)
    assert image.shape[:2] == (size[1], size[0])  # rows = height, columns = width
    assert image[..., :3].std() > 0.01  # something was drawn, not a blank canvas
    return image


def _trials(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        status = rng.choice(["succeeded"] * 5 + ["stopped", "failed"])
        reward = None if status == "failed" else rng.uniform(0.2, 0.9)
        trials.append({"id": f"trial-{i}", "status": status, "reward": reward, "finished": 1_700_000_000 + 7 * i})
    return trials


def test_plot_rewards_writes_a_png_of_the_requested_size_with_failed_trials(tmp_path):
    trials = _trials(30)
    assert any(t["reward"] is None for t in trials)
    path = tmp_path / "rewards.png"
    size = plot_rewards(trials, path, size=(640, 400), dpi=80)
    assert size == (640, 400)
    _png(path, size)


@pytest.mark.parametrize("trials", [[], [{"id": "a", "status": "failed", "reward": None}]], ids=["zero", "only-failed"])
def test_plot_rewards_without_any_reward(tmp_path, trials):
    path = tmp_path / "rewards.png"
    _png(path, plot_rewards(trials, path))


def test_plot_rewards_accepts_unknown_statuses_and_iso_timestamps(tmp_path):
    trials = [
        {"id": "b", "status": "succeeded", "reward": 0.5, "finished": "2024-05-01T10:00:05Z"},
        {"id": "a", "status": "running", "reward": 0.7, "finished": "2024-05-01T10:00:01+00:00"},
    ]
    path = tmp_path / "rewards.png"
    _png(path, plot_rewards(trials, path))


def test_completion_order_sorts_by_finished_only_when_every_trial_has_it():
    trials = [{"id": "late", "finished": "2024-05-01T10:00:09Z"}, {"id": "early", "finished": 1714557600.0}]
    ordered, label = completion_order(trials)
    assert [t["id"] for t in ordered] == ["early", "late"]
    assert "completion" in label
    ordered, label = completion_order(trials + [{"id": "unfinished"}])
    assert [t["id"] for t in ordered] == ["late", "early", "unfinished"]
    assert "index" in label


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_draw_cells_writes_a_png_for_every_space(tmp_path, name):
    path = tmp_path / f"{name}.png"
    size = draw_cells(GENOTYPES[name], path, dpi=50)
    _png(path, size)
    assert size[0] > size[1]  # cells side by side, inputs left of outputs


def _cell_ops(genotype: dict) -> list[list[str]]:
    if genotype["space"] == "nasbench201":
        return [[edge.split("~")[0] for node in genotype["cell"].split("+") for edge in node.strip("|").split("|")]]
    return [[op for block in genotype[kind] for op in block["ops"]] for kind in ("normal", "reduction")]


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_every_operation_is_labelled_and_no_boxes_overlap(name):
    genotype = GENOTYPES[name]
    plans = cell_plans(genotype)
    for plan, ops in zip(plans, _cell_ops(genotype)):
        labels = [b.text for b in plan.boxes if b.kind == "op"]
        assert sorted(labels) == sorted(ops)
        for i, a in enumerate(plan.boxes):
            x0, x1, y0, y1 = plan.extent
            assert x0 <= a.bounds[0] and a.bounds[2] <= x1 and y0 <= a.bounds[1] and a.bounds[3] <= y1
            for b in plan.boxes[i + 1:]:
                assert not _overlap(a.bounds, b.bounds), (a.text, b.text)


def test_nasnet_drawing_has_combines_and_concatenates_the_unused_blocks():
    genotype = GENOTYPES["nasnet-concat-hparams"]
    normal = cell_plans(genotype)[0]
    texts = [b.text for b in normal.boxes]
    assert sum("concat" in t for t in texts) == len(genotype["normal"]) + 1  # every block, and the output
    outputs = unused_blocks(genotype["normal"])
    # One arrow per operation to its label and one on to its block, one per output into the concat.
    assert len(normal.arrows) == 2 * 2 * len(genotype["normal"]) + len(outputs)


def test_draw_cells_rejects_an_invalid_genotype(tmp_path):
    bad = {**NASNET_A, "normal": NASNET_A["normal"][:2]}
    with pytest.raises(InvalidGenotype, match="genotype.normal"):
        draw_cells(bad, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("cell, concatenated", [("normal", 6), ("reduction", 4)])
def test_nasnet_a_drawing_concatenates_what_the_published_cell_does(cell, concatenated):
    # Published NASNet-A: the normal cell also concatenates the unused k-2 input, the reduction
    # cell also block 1 although block 3 consumes it. One arrow per operation to its label and
    # one on to its block, then one per concatenated state.
    plan = dict(zip(["normal", "reduction"], cell_plans(NASNET_A)))[cell]
    assert NASNET_A["concat"][cell] and len(NASNET_A["concat"][cell]) == concatenated
    assert len(plan.arrows) == 2 * 2 * len(NASNET_A[cell]) + concatenated
