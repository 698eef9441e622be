"""Search spaces: encode/decode, validation, string forms, canonical hashes."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import pytest

from controller.spaces import SPACE_NAMES, InvalidArchitecture, create_space
from controller.spaces.cell import ENAS_OPS, NASNET_OPS, enas_micro, nasnet
from controller.spaces.macro import MacroSpace
from controller.spaces.nb201 import NB201Space
from protos.types import Architecture, Node, SearchSpaceSpec

SPECS = [SearchSpaceSpec("nb201"), SearchSpaceSpec("nasnet"), SearchSpaceSpec("enas-micro"),
         SearchSpaceSpec("nasnet", num_blocks=2), SearchSpaceSpec("macro"),
         SearchSpaceSpec("macro", num_layers=4, predict_strides=True)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.name}-{s.num_blocks}-{s.num_layers}")
def test_decode_encode_string_round_trip(spec: SearchSpaceSpec) -> None:
    space = create_space(spec)
    rng = random.Random(0)
    for _ in range(100):
        actions = [rng.randrange(d.num_choices) for d in space.decisions]
        arch = space.decode(actions)
        assert space.encode(arch) == tuple(actions)
        assert space.from_string(space.to_string(arch)) == arch
        space.validate(arch)


def test_registry_names_and_unknown_space() -> None:
    assert set(SPACE_NAMES) == {"nb201", "nasnet", "enas-micro", "macro", "rnn-cell", "enas-rnn"}
    with pytest.raises(KeyError, match=r"unknown search space 'darts'.*nb201"):
        create_space("darts")


def test_decision_counts_match_the_papers() -> None:
    # NASNet: 2 cells x 5 blocks x 5 steps = the "50-step RNN" of PNAS's critique.
    assert len(nasnet().decisions) == 50
    assert len(NASNET_OPS) == 13 and len(ENAS_OPS) == 5
    assert len(enas_micro().decisions) == 40  # no combine decision: ENAS always adds
    assert NB201Space().size == 15625
    macro = MacroSpace(num_layers=6)
    assert sum(d.kind == "skip" for d in macro.decisions) == 15  # 0+1+...+5 anchor sigmoids


def test_block_inputs_grow_with_the_block_index() -> None:
    space = nasnet(num_blocks=5)
    inputs = [d.num_choices for d in space.decisions if d.name.startswith("normal") and
              d.kind == "input"]
    assert inputs == [2, 2, 3, 3, 4, 4, 5, 5, 6, 6]


def test_bad_actions_and_nodes_name_the_field() -> None:
    space = NB201Space()
    with pytest.raises(InvalidArchitecture, match=r"actions\[2\]"):
        space.decode([0, 0, 9, 0, 0, 0])
    with pytest.raises(InvalidArchitecture, match="needs 6 decisions"):
        space.decode([0, 0])
    arch = space.decode([1] * 6)
    bad = Architecture("nb201", (Node("edge", "conv_9x9", (0,), attrs={"to": 1}),
                                 *arch.nodes[1:]))
    with pytest.raises(InvalidArchitecture, match=r"nodes\[0\].op"):
        space.validate(bad)
    with pytest.raises(InvalidArchitecture, match="space"):
        space.validate(Architecture("macro", arch.nodes))
    with pytest.raises(InvalidArchitecture, match="arch_str"):
        space.from_string("not an arch")
    cell = nasnet(num_blocks=2)
    with pytest.raises(InvalidArchitecture, match=r"block 0 can read states 0\.\.1"):
        cell.from_string("normal:identity~2+identity~0,identity~0+identity~1;"
                         "reduction:identity~0+identity~1,identity~0+identity~1")
    with pytest.raises(InvalidArchitecture, match="stride"):
        MacroSpace(num_layers=1).from_string("3x3x24/2")


def test_nb201_canonical_hash_reproduces_the_benchmark_isomorphism_classes(
        nb201_csv: Path) -> None:
    # Arrange
    space = NB201Space()
    ours: dict[str, set[str]] = defaultdict(set)
    theirs: dict[str, set[str]] = defaultdict(set)
    # Act
    with nb201_csv.open() as f:
        for row in csv.DictReader(f):
            arch = space.from_string(row["arch_str"])
            assert space.to_string(arch) == row["arch_str"]
            assert space.canonical_form(arch) == row["unique_str"]
            ours[space.canonical_hash(arch)].add(row["arch_str"])
            theirs[row["unique_str"]].add(row["arch_str"])
    # Assert: 15,625 cells, 6,466 classes, the same partition as the table's unique_str.
    assert sum(len(v) for v in ours.values()) == 15625
    assert len(ours) == 6466
    assert {frozenset(v) for v in ours.values()} == {frozenset(v) for v in theirs.values()}


def test_nb201_isomorphic_cells_share_a_hash() -> None:
    space = NB201Space()
    a = space.from_string("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    b = space.from_string("|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    c = space.from_string("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|nor_conv_1x1~1|"
                          "none~2|")
    # node 1 feeds nothing that reaches the output in a and b: only the skip 0->3 matters
    assert space.canonical_hash(a) == space.canonical_hash(b)
    assert space.canonical_hash(a) != space.canonical_hash(c)


def test_cell_hash_ignores_block_order_and_branch_order() -> None:
    space = nasnet(num_blocks=2)
    red = "reduction:identity~0+identity~1,identity~0+identity~1"
    a = space.from_string(f"normal:sep_conv_3x3~0+identity~1,max_pool_3x3~1+conv_1x1~0;{red}")
    swapped_branches = space.from_string(
        f"normal:identity~1+sep_conv_3x3~0,conv_1x1~0+max_pool_3x3~1;{red}")
    other = space.from_string(f"normal:sep_conv_3x3~1+identity~0,max_pool_3x3~1+conv_1x1~0;{red}")
    concat = space.from_string(f"normal:sep_conv_3x3~0&identity~1,max_pool_3x3~1+conv_1x1~0;{red}")
    assert space.canonical_hash(a) == space.canonical_hash(swapped_branches)
    assert space.canonical_hash(a) != space.canonical_hash(other)
    assert space.canonical_hash(a) != space.canonical_hash(concat)
    # Two independent blocks listed in the other order compute the same cell.
    b1, b2 = "sep_conv_3x3~0+identity~1", "max_pool_3x3~0+conv_1x1~1"
    assert space.canonical_hash(space.from_string(f"normal:{b1},{b2};{red}")) == \
        space.canonical_hash(space.from_string(f"normal:{b2},{b1};{red}"))


def test_hash_depends_on_space_options() -> None:
    small, large = MacroSpace(num_layers=2), MacroSpace(num_layers=2, predict_strides=True)
    a, b = small.from_string("3x3x24;3x3x24<0"), large.from_string("3x3x24/1;3x3x24/1<0")
    assert small.canonical_hash(a) != large.canonical_hash(b)


def test_sample_random_is_seeded_and_covers_choices() -> None:
    for name in SPACE_NAMES:
        space = create_space(name)
        first = [space.sample_random(random.Random(5)) for _ in range(3)]
        again = [space.sample_random(random.Random(5)) for _ in range(3)]
        assert first == again
    space = NB201Space()
    rng = random.Random(0)
    seen = {space.encode(space.sample_random(rng))[0] for _ in range(200)}
    assert seen == set(range(5))
