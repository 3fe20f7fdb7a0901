import csv
import json
import random

import pytest
from hypothesis import given, strategies as st

from kubenas.errors import InvalidGenotype, InvalidSpec
from kubenas.spaces import SPACES, build_space, space_of
from kubenas.spaces.decisions import Categorical
from kubenas.spaces.nasbench201 import parse_cellstr, format_cellstr
from kubenas.spaces.nasnet import NASNET_OPERATIONS

HPARAMS = [
    {"name": "learningRate", "type": "float", "low": 1e-3, "high": 0.1, "log": True},
    {"name": "batchSize", "type": "categorical", "choices": [32, 64, 128]},
    {"name": "epochs", "type": "int", "low": 1, "high": 20},
]


def assignments(space):
    """A hypothesis strategy drawing every decision of a space."""
    draws = {}
    for d in space.decisions:
        draws[d.name] = st.sampled_from(d.choices) if isinstance(d, Categorical) else st.floats(0, 1).map(d.from_unit)
    return st.fixed_dictionaries(draws)


def test_nasnet_has_the_papers_13_operations_and_5_blocks():
    space = build_space("nasnet")
    assert len(NASNET_OPERATIONS) == 13
    assert space.blocks == 5
    # 2 cells x 5 blocks x (2 inputs, 2 ops, 1 combine)
    assert len(space.decisions) == 2 * 5 * 5


@pytest.mark.parametrize("name", sorted(SPACES))
@given(data=st.data())
def test_decode_encode_round_trip_and_json(name, data):
    space = build_space({"type": name, "hyperparameters": HPARAMS})
    genotype = space.decode(data.draw(assignments(space)))
    assert space.validate(genotype) == genotype
    assert space.decode(space.encode(genotype)) == genotype
    assert space.from_json(space.to_json(genotype)) == genotype
    assert space.hash(space.from_json(space.to_json(genotype))) == space.hash(genotype)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_sampling_is_seeded_and_covers_the_space(name):
    space = build_space(name)
    a = [space.sample(random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    hashes = {space.hash(space.sample(random.Random(s))) for s in range(200)}
    assert len(hashes) > 190


def _swap_operands(block):
    return {**block, "inputs": block["inputs"][::-1], "ops": block["ops"][::-1]}


@given(seed=st.integers(0, 10_000))
def test_nasnet_hash_ignores_operand_order_and_block_relabelling(seed):
    space = build_space("nasnet")
    g = space.sample(random.Random(seed))
    swapped = {**g, "normal": [_swap_operands(b) for b in g["normal"]]}
    assert space.hash(swapped) == space.hash(g)


def test_nasnet_hash_ignores_independent_block_order():
    space = build_space("nasnet")
    a = {"inputs": [0, 1], "ops": ["conv_3x3", "identity"], "combine": "add"}
    b = {"inputs": [1, 1], "ops": ["sep_conv_5x5", "max_pool_3x3"], "combine": "concat"}
    rest = [{"inputs": [0, 1], "ops": ["identity", "identity"], "combine": "add"}] * 3
    red = [{"inputs": [0, 1], "ops": ["max_pool_3x3", "identity"], "combine": "add"}] * 5
    g1 = {"space": "nasnet", "normal": [a, b, *rest], "reduction": red}
    g2 = {"space": "nasnet", "normal": [b, a, *rest], "reduction": red}
    assert space.hash(g1) == space.hash(g2)
    # ...but a block that consumes another is not interchangeable with it.
    c = {"inputs": [2, 1], "ops": ["conv_3x3", "identity"], "combine": "add"}
    g3 = {"space": "nasnet", "normal": [a, c, *rest], "reduction": red}
    assert space.hash(g3) != space.hash(g1)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_hash_changes_with_any_single_operation_or_combine(name):
    space = build_space(name)
    for seed in range(20):
        g = space.sample(random.Random(seed))
        a = space.encode(g)
        for d in space.decisions:
            if "op" not in d.name and "combine" not in d.name and "edge" not in d.name:
                continue
            other = next(c for c in d.choices if c != a[d.name])
            mutated = space.decode({**a, d.name: other})
            assert space.hash(mutated) != space.hash(g), (d.name, other)


def test_hyperparameters_are_part_of_the_hash():
    space = build_space({"type": "nasbench201", "hyperparameters": HPARAMS})
    g = space.sample(random.Random(0))
    h = {**g, "hparams": {**g["hparams"], "batchSize": 128 if g["hparams"]["batchSize"] != 128 else 32}}
    assert space.hash(h) != space.hash(g)


def _nasnet():
    return build_space("nasnet").sample(random.Random(0))


@pytest.mark.parametrize("mutate, message", [
    (lambda g: {**g, "normal": g["normal"][:4]}, "genotype.normal: has 4 blocks; this space has B=5"),
    (lambda g: {**g, "normal": [{**g["normal"][0], "ops": ["conv_9x9", "identity"]}] + g["normal"][1:]},
     "genotype.normal[0].ops[0]: 'conv_9x9' is not accepted"),
    (lambda g: {**g, "reduction": g["reduction"][:3] + [{**g["reduction"][3], "inputs": [5, 0]}] + g["reduction"][4:]},
     "genotype.reduction[3].inputs[0]: input 5 is out of range; accepted 0..4"),
    (lambda g: {**g, "normal": [{**g["normal"][0], "inputs": ["0", 1]}] + g["normal"][1:]},
     "genotype.normal.0.inputs.0: Input should be a valid integer"),
    (lambda g: {**g, "normal": [{**g["normal"][0], "combine": "multiply"}] + g["normal"][1:]},
     "genotype.normal.0.combine"),
    (lambda g: {**g, "space": "resnet"}, "genotype.space: 'resnet' is not accepted"),
    (lambda g: {**g, "extra": 1}, "genotype.extra: Extra inputs are not permitted"),
    (lambda g: {**g, "hparams": {"learningRate": 0.1}}, "genotype.hparams: ['learningRate'] are not searched here"),
    (lambda g: [1, 2], "genotype.space: None is not accepted"),
])
def test_malformed_nasnet_genotypes_are_rejected_with_the_field_named(mutate, message):
    bad = mutate(_nasnet())
    with pytest.raises(InvalidGenotype) as err:
        space_of(bad).validate(bad) if isinstance(bad, dict) and bad.get("space") in SPACES else space_of(bad)
    assert message in str(err.value)


def test_truncated_json_is_rejected_readably():
    space = build_space("nasnet")
    text = space.to_json(_nasnet())
    with pytest.raises(InvalidGenotype, match=r"genotype is not valid JSON: .* line 1 column \d+"):
        space.from_json(text[: len(text) // 2])


def test_darts_rejects_repeated_inputs_and_normalises_order():
    space = build_space("darts")
    g = space.sample(random.Random(0))
    g["normal"][2] = {"inputs": [3, 1], "ops": ["sep_conv_3x3", "none"]}
    assert space.validate(g)["normal"][2] == {"inputs": [1, 3], "ops": ["none", "sep_conv_3x3"]}
    g["normal"][2] = {"inputs": [1, 1], "ops": ["sep_conv_3x3", "none"]}
    with pytest.raises(InvalidGenotype, match=r"genotype.normal\[2\].inputs: the two inputs must differ"):
        space.validate(g)


def test_restricted_space_samples_only_allowed_choices_and_rejects_others():
    space = build_space({"type": "nasnet", "blocks": 3, "operations": ["conv_3x3", "identity"], "combines": ["add"]})
    for seed in range(50):
        g = space.sample(random.Random(seed))
        assert len(g["normal"]) == 3
        assert {op for b in g["normal"] + g["reduction"] for op in b["ops"]} <= {"conv_3x3", "identity"}
    g["normal"][0]["ops"][0] = "sep_conv_3x3"
    with pytest.raises(InvalidGenotype, match="choose one of \\['identity', 'conv_3x3'\\]"):
        space.validate(g)
    with pytest.raises(InvalidSpec, match="searchSpace.operations: 'warp_drive' is not accepted"):
        build_space({"type": "nasnet", "operations": ["warp_drive"]})


@pytest.mark.parametrize("cell, message", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|", "expected 3 nodes"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|", "node 3 needs 3 edges"),
    ("|nor_conv_3x3~1|+|nor_conv_3x3~0|none~1|+|none~0|none~1|none~2|", "node 1 edge 0 must read '<op>~0'"),
    ("|conv~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|none~2|", "'conv' is not accepted"),
    ("nor_conv_3x3~0+|nor_conv_3x3~0|none~1|+|none~0|none~1|none~2|", "node 1 must be written |op~i|"),
])
def test_malformed_nb201_cell_strings(cell, message):
    with pytest.raises(InvalidGenotype, match=r"genotype.cell: .*" + __import__("re").escape(message)):
        build_space("nasbench201").validate({"space": "nasbench201", "cell": cell})


def test_every_row_of_the_nasbench201_table_parses_and_round_trips(nb201_table_path):
    space = build_space("nasbench201")
    with open(nb201_table_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15625
    hashes = set()
    for row in rows:
        genotype = space.validate({"space": "nasbench201", "cell": row["cellstr"]})
        assert genotype["cell"] == row["cellstr"]
        assert format_cellstr(parse_cellstr(row["cellstr"])) == row["cellstr"]
        hashes.add(space.hash(genotype))
        assert space.decode(space.encode(genotype)) == genotype
    assert len(hashes) == 15625


def test_hyperparameter_spec_errors_name_the_field():
    with pytest.raises(Exception, match="type float needs low and high"):
        build_space({"type": "nasnet", "hyperparameters": [{"name": "learningRate", "type": "float"}]})
    with pytest.raises(Exception, match="log scale needs low > 0"):
        build_space({"type": "nasnet", "hyperparameters": [
            {"name": "weightDecay", "type": "float", "low": 0, "high": 1, "log": True}]})


def test_genotype_json_is_plain_data():
    g = build_space({"type": "darts", "hyperparameters": HPARAMS}).sample(random.Random(3))
    assert json.loads(json.dumps(g)) == g
