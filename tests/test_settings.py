"""The settings table (controller.settings) is the one declaration of each search setting: the
config, the ``nas search`` flags, the YAML keys and the SearchSpec mapping agree with it."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from controller.config import ConfigError, SearchConfig, build_config
from controller.distributed.shards import layout_for
from controller.service.spec import (
    NOT_SETTINGS,
    spec_from_settings,
    spec_settings,
    spec_to_config,
)
from controller.settings import BY_NAME, DEFAULT_GPU_SHARE, SETTINGS, WIRE_SETTINGS, Setting
from nas.cli import build_parser
from nas.search_command import flag_help, parse_config
from nas.serve_command import spec_from_file
from protos.errors import InvalidArgumentError
from protos.types import StalenessRule
from protos.v1 import search_pb2 as sp


def leaf_fields(descriptor: Descriptor, prefix: str = "") -> dict[str, FieldDescriptor]:
    """Every field of a message that holds a value, by dotted path; a repeated field is one."""
    out: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        path = prefix + field.name
        if field.message_type is not None and not field.is_repeated:
            out.update(leaf_fields(field.message_type, path + "."))
        else:
            out[path] = field
    return out


SPEC_FIELDS = leaf_fields(sp.SearchSpec.DESCRIPTOR)


def search_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["search"]
    return parser


def test_every_spec_field_is_exactly_one_setting_and_back() -> None:
    wired = [str(s.wire) for s in WIRE_SETTINGS]
    assert len(wired) == len(set(wired)), "two settings on one field"
    for path in SPEC_FIELDS:
        owners = [s.name for s in WIRE_SETTINGS if s.wire == path]
        assert len(owners) + (path in NOT_SETTINGS) == 1, f"spec.{path}: settings {owners}"
    assert set(wired) <= set(SPEC_FIELDS), set(wired) - set(SPEC_FIELDS)
    assert set(NOT_SETTINGS) <= set(SPEC_FIELDS)


def _annotation(setting: Setting) -> str:
    kind = "tuple[str, ...]" if setting.type is tuple else setting.type.__name__
    return f"{kind} | None" if setting.nullable else kind


def test_the_table_and_search_config_declare_the_same_settings() -> None:
    config = {f.name: f for f in fields(SearchConfig)}
    assert sorted(config) == sorted(BY_NAME)
    assert len(SETTINGS) == len(BY_NAME)
    for setting in SETTINGS:
        field = config[setting.name]
        assert field.default is not MISSING and field.default == setting.default, setting.name
        assert str(field.type) == _annotation(setting), setting.name
    hints = typing.get_type_hints(SearchConfig)
    assert all(setting.name in hints for setting in SETTINGS)


def test_the_parser_has_one_flag_per_setting() -> None:
    flags = {a.dest: a for a in search_parser()._actions if a.option_strings}
    assert set(flags) == set(BY_NAME) | {"help", "quiet"}
    for setting in SETTINGS:
        action = flags[setting.name]
        assert action.option_strings == [setting.cli_flag]
        assert action.help == flag_help(setting)
        assert list(action.choices or ()) == list(setting.choices or ())


def test_an_unset_flag_is_the_configs_default() -> None:
    args = search_parser().parse_args([])
    assert set(vars(args)) <= {"spec", "func"}  # argparse sets no setting of its own
    assert parse_config(args) == SearchConfig()


def test_help_states_each_default_from_the_table() -> None:
    for setting in SETTINGS:
        shown = setting.shown_default
        if shown is not None:
            assert flag_help(setting).endswith(f"(default: {shown.replace('%', '%%')})")
    assert f"{DEFAULT_GPU_SHARE:g} when" in flag_help(BY_NAME["gpus_per_child"])
    assert "(default: 0.0003)" in flag_help(BY_NAME["weight_decay"])
    search_parser().format_help()  # every help formats (a literal % is escaped)


def _outside(setting: Setting) -> list[Any]:
    bad: list[Any] = []
    if setting.choices is not None:
        bad.append("no-such-" + setting.name)
    if setting.min is not None:
        bad.append(setting.type(setting.min) - (0 if setting.min_open else 1))
    if setting.max is not None:
        bad.append(setting.type(setting.max) + (0 if setting.max_open else 1))
    if setting.type is float:
        bad.append(float("nan"))
    return bad


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_a_value_outside_the_range_is_an_error_naming_the_setting(setting: Setting) -> None:
    for value in _outside(setting):
        with pytest.raises(ConfigError, match=rf"^{setting.name}: "):
            build_config({setting.name: value})


@pytest.mark.parametrize("setting", [s for s in WIRE_SETTINGS if s.min is not None],
                         ids=lambda s: s.name)
def test_a_spec_value_below_the_range_names_the_wire_field(setting: Setting) -> None:
    value = setting.type(setting.min) - (0 if setting.min_open else 1)
    spec = spec_from_settings({"budget": 5, **_group_defaults(setting), setting.name: value})
    if setting.name not in spec_settings(spec):
        assert value == 0  # a plain field's zero: unset on the wire, the default
        return
    with pytest.raises(InvalidArgumentError, match=rf"^spec\.{setting.wire}: "):
        spec_to_config(spec)


def _group_defaults(setting: Setting) -> dict[str, Any]:
    """A model or recipe sends all its settings: the others at their defaults."""
    group = str(setting.wire).rsplit(".", 1)[0]
    if group not in ("evaluation.model", "evaluation.recipe"):
        return {}
    return {s.name: s.default for s in WIRE_SETTINGS if str(s.wire).startswith(group + ".")}


def _nonzero(field: FieldDescriptor, setting: Setting) -> Any:
    if field.is_repeated:
        return [sp.Objective(metric="params", target=5.0, weight=-0.5)]
    if setting.choices is not None:
        return setting.choices[-1]
    if setting.pattern is not None:
        return "cpu"
    return {FieldDescriptor.TYPE_BOOL: True, FieldDescriptor.TYPE_STRING: "x",
            FieldDescriptor.TYPE_DOUBLE: 0.5}.get(field.type, 2)


def test_a_spec_of_every_setting_goes_to_settings_and_back_unchanged() -> None:
    spec = sp.SearchSpec()
    for setting in WIRE_SETTINGS:
        field = SPEC_FIELDS[str(setting.wire)]
        *parents, leaf = str(setting.wire).split(".")
        msg: Any = spec
        for part in parents:
            msg = getattr(msg, part)
        value = _nonzero(field, setting)
        if field.is_repeated:
            getattr(msg, leaf).extend(value)
        else:
            setattr(msg, leaf, value)
    settings = spec_settings(spec)
    assert set(settings) == {s.name for s in WIRE_SETTINGS}
    assert spec_from_settings(settings) == spec
    assert spec_settings(spec_from_settings(settings)) == settings


def test_an_unset_optional_field_stays_unset_and_a_zero_is_kept() -> None:
    assert "children" not in spec_settings(sp.SearchSpec(budget=5))
    assert "staleness" not in spec_settings(sp.SearchSpec(budget=5))
    zero = sp.SearchSpec(budget=5, controller=sp.ControllerSpec(candidates=0),
                         execution=sp.ExecutionSpec(staleness=0))
    settings = spec_settings(zero)
    assert settings["candidates"] == 0 and settings["staleness"] == 0
    back = spec_from_settings(settings)
    assert back.controller.HasField("candidates") and back.execution.HasField("staleness")
    assert not back.controller.HasField("children")
    # a plain field's zero is unset, except where the table says zero is a value
    assert spec_settings(sp.SearchSpec(budget=5)) == {"budget": 5, "seed": 0,
                                                      "failure_reward": 0.0}


def test_a_yaml_job_file_accepts_the_wire_keys_and_names_any_other(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("budget: 7\nout: runs/x\ncontroller-lr: 0.01\n")
    spec = spec_from_file(path)
    assert spec.budget == 7 and spec.controller.learning_rate == 0.01
    local = [s.yaml_key for s in SETTINGS if s.wire is None and s.name != "out"]
    assert "shards" in local
    for key in local:
        path.write_text(f"budget: 7\n{key}: 1\n")
        with pytest.raises(ConfigError, match=rf"^{key}: not settable for a submitted job"):
            spec_from_file(path)


def test_the_staleness_rule_travels_from_flag_yaml_and_spec_to_the_layout(tmp_path: Path) -> None:
    # the flag, the default (scale) and a bad value naming the flag
    parser = search_parser()
    assert parse_config(parser.parse_args([])).staleness_rule == "scale"
    cfg = parse_config(parser.parse_args(["--staleness-rule", "reject", "--replicas", "3"]))
    assert (cfg.staleness_rule, cfg.replicas) == ("reject", 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["--staleness-rule", "drop"])
    # the YAML key of a submitted job, onto the wire and back into a config
    path = tmp_path / "job.yaml"
    path.write_text("budget: 7\nstaleness_rule: reject\n")
    spec = spec_from_file(path)
    assert spec.execution.staleness_rule == "reject"
    assert spec_to_config(spec).staleness_rule == "reject"
    path.write_text("budget: 7\nstaleness_rule: drop\n")
    with pytest.raises(ConfigError, match=r"^staleness_rule: 'drop' is not one of scale, "
                                          r"reject"):
        spec_from_file(path)
    # a spec with a bad value: INVALID_ARGUMENT naming the wire field
    bad = sp.SearchSpec(budget=5, execution=sp.ExecutionSpec(staleness_rule="drop"))
    with pytest.raises(InvalidArgumentError, match=r"^spec\.execution\.staleness_rule: 'drop'"):
        spec_to_config(bad)
    # the parameter-server layout of a job: the rule, and K for the scale rule
    layout = layout_for(cfg, "job", 100, 0.01, (0.9, 0.999))
    assert (layout.staleness_rule, layout.replicas, layout.staleness) == \
        (StalenessRule.REJECT, 3, 4)
    default = layout_for(SearchConfig(replicas=5), "job", 100, 0.01, (0.9, 0.999))
    assert (default.staleness_rule, default.replicas) == (StalenessRule.SCALE, 5)
