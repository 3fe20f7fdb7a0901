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


# --- which hidden states a cell concatenates --------------------------------------------

NASNET_A = json.loads((__import__("pathlib").Path(__file__).resolve().parents[2]
                       / "examples" / "genotypes" / "nasnet-a.json").read_text())


def _without_concat(genotype):
    return {k: v for k, v in genotype.items() if k != "concat"}


def test_a_genotype_without_concat_keeps_its_hash():
    # The hash NASNet-A had before genotypes could name their outputs (README, describe).
    assert space_of(NASNET_A).hash(_without_concat(NASNET_A)) == "befdf4e8926d1caf"


def test_concat_is_validated_normalised_and_hashed():
    space = build_space("nasnet")
    genotype = space.validate(NASNET_A)
    assert genotype["concat"] == {"normal": [0, 2, 3, 4, 5, 6], "reduction": [3, 4, 5, 6]}
    shuffled = {**NASNET_A, "concat": {"normal": [6, 5, 4, 3, 2, 0], "reduction": [6, 3, 5, 4]}}
    assert space.validate(shuffled)["concat"] == genotype["concat"]
    assert space.hash(shuffled) == space.hash(NASNET_A)
    # Naming what the default concatenates anyway is the same architecture...
    plain = _without_concat(NASNET_A)
    default = {**plain, "concat": {"normal": [2, 3, 4, 5, 6], "reduction": [4, 5, 6]}}
    assert space.hash(default) == space.hash(plain)
    # ...and concatenating more is another one, cell by cell.
    assert space.hash(NASNET_A) != space.hash(plain)
    assert space.hash({**plain, "concat": {"reduction": [3, 4, 5, 6]}}) not in (space.hash(plain), space.hash(NASNET_A))
    assert space.from_json(space.to_json(genotype)) == genotype


@pytest.mark.parametrize("concat, message", [
    ({"normal": []}, "genotype.concat.normal: is empty"),
    ({"normal": [0, 2, 3, 4, 5, 9]}, "genotype.concat.normal[5]: input 9 is out of range; accepted 0..6"),
    ({"normal": [0, 2, 2, 3, 4, 5, 6]}, "names a hidden state twice"),
    ({"reduction": [3, 4, 5]}, "genotype.concat.reduction: [3, 4, 5] leaves out [6], which no block consumes"),
    ({"normal": ["0"]}, "genotype.concat.normal.0: Input should be a valid integer"),
    ({"stem": [0]}, "genotype.concat.stem: Extra inputs are not permitted"),
])
def test_bad_concat_lists_are_refused_with_the_field_named(concat, message):
    with pytest.raises(InvalidGenotype) as err:
        build_space("nasnet").validate({**NASNET_A, "concat": concat})
    assert message in str(err.value)


def test_darts_cells_concatenate_every_node_and_take_no_concat():
    g = build_space("darts").sample(random.Random(0))
    with pytest.raises(InvalidGenotype, match="genotype.concat: Extra inputs are not permitted"):
        build_space("darts").validate({**g, "concat": {"normal": [2, 3, 4, 5]}})


# --- genotypes carry their number of blocks -------------------------------------------

@pytest.mark.parametrize("name, blocks", [("nasnet", 2), ("nasnet", 10), ("darts", 3), ("darts", 1)])
def test_a_genotype_from_a_space_with_other_blocks_validates_by_itself(name, blocks):
    searched = build_space({"type": name, "blocks": blocks})
    genotype = searched.sample(random.Random(blocks))
    space = space_of(genotype)
    assert space.blocks == blocks
    assert space.validate_architecture(genotype) == {**genotype, "hparams": {}}
    assert space.hash(genotype) == searched.hash(genotype)


def test_block_counts_outside_the_spaces_limits_are_refused():
    g = build_space({"type": "nasnet", "blocks": 10}).sample(random.Random(0))
    big = {**g, "normal": g["normal"] + g["normal"][:1], "reduction": g["reduction"] + g["reduction"][:1]}
    with pytest.raises(InvalidGenotype, match=r"genotype.normal: has 11 blocks; accepted 1..10"):
        space_of(big)
    with pytest.raises(InvalidGenotype, match=r"genotype.reduction: has 9 blocks; this space has B=10"):
        space_of(g).validate({**g, "reduction": g["reduction"][:9]})
    with pytest.raises(InvalidGenotype, match=r"genotype.normal: has 0 blocks"):
        space_of({**g, "normal": [], "reduction": []}).validate({**g, "normal": [], "reduction": []})


@pytest.mark.parametrize("value", [["nasnet"], {"name": "nasnet"}, 5, None])
def test_a_space_field_that_is_not_a_name_is_refused(value):
    with pytest.raises(InvalidGenotype, match=r"genotype.space: .* is not accepted; choose one of \["):
        space_of({**_nasnet(), "space": value})


# --- bad input --------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "genotype is not UTF-8 text (byte 0x89 at offset 0)"),
    ("[" * 5000 + "]" * 5000, "genotype: JSON nested"),
    ("[" * 40 + "]" * 40, "genotype: JSON nested more than 32 levels deep"),
    ('{"space": "nasnet", "hparams": {"epochs": Infinity}}', "genotype.hparams.epochs: Infinity is not accepted"),
    ('{"space": "nasnet", "hparams": {"learningRate": NaN}}', "genotype.hparams.learningRate: NaN is not accepted"),
    ('{"space": "nasnet", "hparams": {"learningRate": 1e400}}', "genotype.hparams.learningRate: 1e400 is not accepted"),
])
def test_unreadable_genotype_text_is_refused_in_one_line(text, message):
    from kubenas.spaces import load_genotype

    with pytest.raises(InvalidGenotype) as err:
        load_genotype(text)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InvalidGenotype):
        build_space("nasnet").from_json(text)


@pytest.mark.parametrize("name", ["darts", "nasbench201"])
def test_an_operation_list_of_only_none_is_refused(name):
    with pytest.raises(InvalidSpec, match=r"searchSpace.operations: \['none'\] is not accepted; .*no architecture can learn"):
        build_space({"type": name, "operations": ["none"]})
    build_space({"type": name, "operations": ["none", "skip_connect"]})  # a skip carries the input


def test_a_bad_space_section_is_one_readable_error():
    with pytest.raises(InvalidSpec, match=r"searchSpace.blocks: Input should be less than or equal to 10 \(got 1000\)"):
        build_space({"type": "nasnet", "blocks": 1000})
