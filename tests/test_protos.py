"""The contract package: generated code is current, and values round-trip through the wire."""

from __future__ import annotations

import random

import pytest

from controller.spaces import SPACE_NAMES, create_space
from protos import codec, generate
from protos.types import (
    Architecture,
    Node,
    SearchSpaceSpec,
    Trial,
    TrialResult,
    TrialStatus,
)
from protos.v1 import common_pb2


def test_committed_generated_code_is_current() -> None:
    # Arrange / Act: regenerate every .proto into a temporary directory and compare.
    stale = generate.drift()
    # Assert
    assert stale == [], f"regenerate with `python -m protos.generate`: {stale}"


def test_generated_package_is_nas_v1() -> None:
    assert common_pb2.DESCRIPTOR.package == "nas.v1"


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_architectures_of_every_space_round_trip(name: str) -> None:
    space = create_space(SearchSpaceSpec(name, predict_strides=(name == "macro")))
    rng = random.Random(1)
    for _ in range(20):
        arch = space.sample_random(rng)
        wire = codec.architecture_to_proto(arch).SerializeToString()
        back = codec.architecture_from_proto(common_pb2.Architecture.FromString(wire))
        assert back == arch
        space.validate(back)


def test_trial_and_result_round_trip() -> None:
    # Arrange
    arch = Architecture("nb201", (Node("edge", "skip_connect", (0,), attrs={"to": 1}),))
    trial = Trial("t1", arch, (1, 2, 3), arch_hash="abc", policy_version=7, job_id="j",
                  attempt=2)
    result = TrialResult("t1", TrialStatus.FAILED, 0.0, {"params": 12.0}, error="NaN loss")
    spec = SearchSpaceSpec("macro", num_layers=8, predict_strides=True)
    # Act
    trial_back = codec.trial_from_proto(
        common_pb2.Trial.FromString(codec.trial_to_proto(trial).SerializeToString()))
    result_back = codec.trial_result_from_proto(codec.trial_result_to_proto(result))
    spec_back = codec.space_spec_from_proto(codec.space_spec_to_proto(spec))
    # Assert
    assert trial_back == trial
    assert result_back == result
    assert spec_back == spec


def test_values_are_immutable_and_validated() -> None:
    node = Node("edge", "none", (0,), attrs={"to": 1})
    with pytest.raises(AttributeError):
        node.op = "skip_connect"  # type: ignore[misc]
    with pytest.raises(TypeError):
        node.attrs["to"] = 2  # type: ignore[index]
    with pytest.raises(ValueError, match=r"Node\.op"):
        Node("edge", "")
    with pytest.raises(ValueError, match="reward"):
        TrialResult("t", TrialStatus.SUCCEEDED, float("nan"))
    with pytest.raises(ValueError, match="error"):
        TrialResult("t", TrialStatus.FAILED, 0.0)
    with pytest.raises(ValueError, match="actions"):
        Trial("t", Architecture("nb201", ()), (-1,), arch_hash="h")


def test_unspecified_status_on_the_wire_is_rejected() -> None:
    msg = common_pb2.TrialResult(trial_id="t", reward=0.5)
    with pytest.raises(ValueError, match="status"):
        codec.trial_result_from_proto(msg)
