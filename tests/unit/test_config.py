"""searchr1.config: the generic typed config loader, on the real root config and small dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import pytest
import yaml

from searchr1.config import (
    describe,
    from_dict,
    load_config,
    param,
    parse_overrides,
    preset_names,
    read_preset,
    to_yaml,
    with_overrides,
)
from searchr1.errors import ConfigError
from searchr1.settings import Config


# ----------------------------------------------------------------------------- small test configs


@dataclass
class Inner:
    rate: float = param(0.5, "a rate")
    flag: bool = param(False, "a flag")


@dataclass
class Small:
    count: int = param(3, "how many")
    name: str = param("x", "a name")
    mode: Literal["fast", "slow"] = param("fast", "speed")
    tags: list[str] = param(["a"], "some tags")
    limit: Optional[int] = param(None, "optional limit")
    inner: Inner = param(Inner, "nested section")

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")


# ----------------------------------------------------------------------------- param / defaults


def test_param_gives_each_instance_its_own_list_and_section():
    a, b = Small(), Small()
    a.tags.append("b")
    a.inner.rate = 9.0
    assert b.tags == ["a"]
    assert b.inner.rate == 0.5


def test_from_dict_empty_mapping_gives_defaults():
    assert from_dict(Small, {}) == Small()


def test_from_dict_sets_nested_values():
    cfg = from_dict(Small, {"count": 7, "inner": {"flag": True}})
    assert cfg.count == 7
    assert cfg.inner == Inner(rate=0.5, flag=True)


def test_from_dict_rejects_a_non_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict(Small, ["count", 1])


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_nested_key_names_full_dotted_key_and_suggests_fix():
    with pytest.raises(ConfigError) as e:
        load_config(Config, overrides=["server.prot=8001"])
    msg = str(e.value)
    assert "'server.prot'" in msg
    assert "did you mean 'server.port'" in msg


def test_unknown_deeply_nested_key_names_full_dotted_key():
    with pytest.raises(ConfigError) as e:
        load_config(Config, overrides=["index.bm25.stemer=porter"])
    assert "'index.bm25.stemer'" in str(e.value)
    assert "did you mean 'index.bm25.stemmer'" in str(e.value)


def test_unknown_top_level_key_is_rejected():
    with pytest.raises(ConfigError, match="unknown config key 'serverx'"):
        load_config(Config, overrides=["serverx.port=1"])


def test_unknown_key_without_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as e:
        from_dict(Small, {"zzzzzz": 1})
    assert "did you mean" not in str(e.value)
    assert "valid keys here: count, inner, limit, mode, name, tags" in str(e.value)


@pytest.mark.parametrize("old, new", [
    ("train.lr=1e-5", "train.optim.lr"),  # the same leaf, moved into a section
    ("train.precision=fp32", "train.compute.precision"),
    ("train.exclude_held_out=true", "train.questions.exclude_held_out"),
    ("train.kl_coef=0.01", "train.kl.coef"),  # a section's name joined to its leaf
    ("train.lora_r=8", "train.lora.r"),
    ("train.loss_agg=token-mean", "train.loss.agg"),
    ("eval.agent_template=r1", "agent.template"),  # the leaf elsewhere in the tree
    ("train.template=r1", "agent.template"),
    ("data.template=r1", "agent.template"),
])
def test_a_key_that_moved_is_suggested_by_its_new_dotted_path(old, new):
    with pytest.raises(ConfigError) as e:
        load_config(Config, overrides=[old])
    assert f"unknown config key '{old.split('=')[0]}'" in str(e.value)
    assert f"did you mean '{new}'?" in str(e.value)


def test_a_moved_key_is_suggested_in_a_preset_file_too(tmp_path):
    p = tmp_path / "old.yaml"
    p.write_text("train:\n  optim:\n    lr: 1.0e-5\n  kl_in_reward: true\n")
    with pytest.raises(ConfigError, match=r"'train.kl_in_reward' \(did you mean 'train.kl.in_reward'\?\)"):
        load_config(Config, str(p))


@dataclass
class Rated:
    rate: float = param(0.1, "a rate")


@dataclass
class TwoRates:
    a: Rated = param(Rated, "a")
    b: Small = param(Small, "b, whose inner section has a rate too")


def test_a_leaf_in_several_sections_is_suggested_nearest_first():
    with pytest.raises(ConfigError, match=r"did you mean 'b.inner.rate'"):
        from_dict(TwoRates, {"b": {"rate": 1.0}})  # below b, not a.rate
    with pytest.raises(ConfigError, match=r"did you mean 'a.rate'"):
        from_dict(TwoRates, {"rate": 1.0})  # the shortest path below the root


# ----------------------------------------------------------------------------- types and coercion


def test_wrong_type_error_names_the_key():
    with pytest.raises(ConfigError) as e:
        load_config(Config, overrides=["server.port=abc"])
    assert str(e.value).startswith("server.port:")
    assert "integer" in str(e.value)


def test_list_from_comma_separated_string():
    cfg = load_config(Config, overrides=["index.methods=bm25,dense"])
    assert cfg.index.methods == ["bm25", "dense"]


def test_list_from_yaml_flow_sequence():
    cfg = load_config(Config, overrides=["index.methods=[dense]"])
    assert cfg.index.methods == ["dense"]


def test_literal_rejects_value_outside_choices_and_names_list_item():
    with pytest.raises(ConfigError) as e:
        load_config(Config, overrides=["index.methods=bm25,foo"])
    assert "index.methods[1]" in str(e.value)
    assert "'foo'" in str(e.value)


def test_literal_scalar_rejected():
    with pytest.raises(ConfigError, match="retriever.method: expected one of"):
        load_config(Config, overrides=["retriever.method=sparse"])


def test_literal_scalar_accepted():
    assert load_config(Config, overrides=["retriever.method=hybrid"]).retriever.method == "hybrid"


def test_float_from_exponent_without_dot():
    # YAML 1.1 reads `1e-6` as a string; the loader must still make a float of it.
    assert yaml.safe_load("1e-6") == "1e-6"
    cfg = load_config(Config, overrides=["retriever.backoff_s=1e-6"])
    assert cfg.retriever.backoff_s == 1e-6
    assert isinstance(cfg.retriever.backoff_s, float)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", float("nan"), float("inf"), float("-inf")])
def test_float_field_rejects_non_finite_numbers_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"inner.rate: expected a finite number"):
        from_dict(Small, {"inner": {"rate": value}})


def test_non_finite_overrides_and_yaml_are_rejected_with_the_dotted_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train.optim.lr: expected a finite number, got 'nan'"):
        load_config(Config, overrides=["train.optim.lr=nan"])
    with pytest.raises(ConfigError, match=r"train.kl.coef: expected a finite number, got 'inf'"):
        load_config(Config, overrides=["train.kl.coef=inf"])
    p = tmp_path / "nan.yaml"
    p.write_text("train:\n  loss:\n    clip_ratio: .nan\n")
    with pytest.raises(ConfigError, match=r"train.loss.clip_ratio: expected a finite number"):
        load_config(Config, str(p))


def test_int_given_for_float_field_becomes_float():
    cfg = load_config(Config, overrides=["server.max_wait_ms=3"])
    assert cfg.server.max_wait_ms == 3.0
    assert isinstance(cfg.server.max_wait_ms, float)


def test_integral_float_accepted_for_int_field():
    cfg = load_config(Config, overrides=["server.port=8001.0"])
    assert cfg.server.port == 8001
    assert isinstance(cfg.server.port, int)


def test_fractional_float_rejected_for_int_field():
    with pytest.raises(ConfigError, match="server.port: expected an integer"):
        load_config(Config, overrides=["server.port=8001.5"])


def test_bool_field_rejects_integer():
    with pytest.raises(ConfigError, match="server.batching: expected true or false"):
        load_config(Config, overrides=["server.batching=1"])


def test_bool_field_accepts_yaml_booleans():
    assert load_config(Config, overrides=["server.batching=false"]).server.batching is False
    assert load_config(Config, overrides=["index.overwrite=true"]).index.overwrite is True


def test_int_field_rejects_bool():
    with pytest.raises(ConfigError, match="server.port: expected an integer"):
        load_config(Config, overrides=["server.port=true"])


def test_float_field_rejects_bool():
    with pytest.raises(ConfigError, match="retriever.timeout_s: expected a number"):
        load_config(Config, overrides=["retriever.timeout_s=true"])


def test_str_field_accepts_number_as_text():
    assert load_config(Config, overrides=["index.dir=2024"]).index.dir == "2024"


def test_optional_field_accepts_null_and_value():
    assert from_dict(Small, {"limit": None}).limit is None
    assert from_dict(Small, {"limit": 4}).limit == 4


def test_optional_field_rejects_wrong_type_naming_key():
    with pytest.raises(ConfigError, match="limit: expected int or null"):
        from_dict(Small, {"limit": "many"})


def test_section_given_a_scalar_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="inner: expected a mapping"):
        from_dict(Small, {"inner": 3})


def test_list_field_rejects_mapping():
    with pytest.raises(ConfigError, match="tags: expected a list"):
        from_dict(Small, {"tags": {"a": 1}})


# ----------------------------------------------------------------------------- validation


def test_post_init_validation_surfaces_as_config_error_naming_section():
    with pytest.raises(ConfigError) as e:
        load_config(Config, overrides=["server.port=70000"])
    assert str(e.value).startswith("server:")
    assert "70000" in str(e.value)


def test_post_init_validation_in_nested_section():
    with pytest.raises(ConfigError, match=r"^index\.bm25: need k1 >= 0"):
        load_config(Config, overrides=["index.bm25.k1=-1"])


@pytest.mark.parametrize("override, message", [
    ("demo.eval_questions=0", "demo.eval_questions must be >= 1"),
    ("demo.eval_every=-1", "demo.eval_every, demo.examples and demo.max_questions must be >= 0"),
])
def test_demo_section_checks_its_values(override, message):
    with pytest.raises(ConfigError, match=rf"^demo: {message}"):
        load_config(Config, "cpu-demo", [override])


def test_post_init_validation_at_top_level():
    with pytest.raises(ConfigError, match="^config: count must be >= 0"):
        from_dict(Small, {"count": -1})


# ----------------------------------------------------------------------------- overrides


def test_parse_overrides_builds_nested_dict_with_yaml_scalars():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true", "e=1.5", "f="]) == {
        "a": {"b": 1, "c": "x"},
        "d": True,
        "e": 1.5,
        "f": "",
    }


def test_parse_overrides_value_may_contain_equals_sign():
    assert parse_overrides(["url=http://h:1/?a=b"]) == {"url": "http://h:1/?a=b"}


def test_parse_overrides_later_wins():
    assert parse_overrides(["a=1", "a=2"]) == {"a": 2}


def test_parse_overrides_rejects_missing_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["server.port"])


@pytest.mark.parametrize("item", ["=1", "a..b=1", ".a=1"])
def test_parse_overrides_rejects_empty_key_parts(item):
    with pytest.raises(ConfigError, match="empty key"):
        parse_overrides([item])


def test_parse_overrides_cannot_descend_into_a_scalar():
    with pytest.raises(ConfigError, match="'a' is not a section"):
        parse_overrides(["a=1", "a.b=2"])


def test_with_overrides_changes_a_built_config_and_checks_it_as_loading_does():
    small = from_dict(Small, {"count": 4, "tags": ["b"]})
    assert with_overrides(small, ["inner.rate=0.25", "name=y"]) == Small(count=4, name="y", tags=["b"],
                                                                        inner=Inner(rate=0.25))
    assert small.inner.rate == 0.5  # the original is left as it was
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.rat' \(did you mean 'inner.rate'\?\)"):
        with_overrides(small, ["inner.rat=1"])
    with pytest.raises(ConfigError, match="count must be >= 0"):
        with_overrides(small, ["count=-1"])


# ----------------------------------------------------------------------------- presets


def test_bundled_presets_are_listed():
    names = preset_names()
    assert "cpu-demo" in names
    assert names == sorted(names)


@pytest.mark.parametrize("name", preset_names())
def test_every_bundled_preset_loads(name):
    cfg = load_config(Config, name)
    assert isinstance(cfg, Config)


def test_preset_values_apply_and_overrides_win():
    cfg = load_config(Config, "wiki18-bm25", ["server.port=9001"])
    assert cfg.retriever.index == "runs/wiki18-bm25"
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 9001


def test_missing_preset_error_lists_bundled_presets():
    with pytest.raises(ConfigError) as e:
        read_preset("no-such-preset")
    assert "not found" in str(e.value)
    assert "cpu-demo" in str(e.value)


def test_extends_merges_parent_and_child_wins(tmp_path):
    (tmp_path / "base.yaml").write_text("server:\n  port: 1234\n  host: base-host\nretriever:\n  topk: 7\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {tmp_path / 'base.yaml'}\nserver:\n  port: 4321\n")
    data = read_preset(child)
    assert data == {"server": {"port": 4321, "host": "base-host"}, "retriever": {"topk": 7}}


def test_extends_a_bundled_preset_by_name(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: wiki18-bm25\nserver:\n  port: 4321\n")
    cfg = load_config(Config, child)
    assert cfg.retriever.index == "runs/wiki18-bm25"
    assert cfg.server.port == 4321
    assert cfg.server.host == "127.0.0.1"


def test_extends_relative_path_is_resolved_beside_the_extending_file(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "base.yaml").write_text("server:\n  port: 1234\n")
    (conf / "child.yaml").write_text("extends: base.yaml\nretriever:\n  topk: 5\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert read_preset(conf / "child.yaml") == {"server": {"port": 1234}, "retriever": {"topk": 5}}


def test_extends_cycle_is_detected(tmp_path):
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="extends itself"):
        read_preset(tmp_path / "a.yaml")


def test_preset_with_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_preset(bad)


def test_preset_top_level_must_be_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_preset(bad)


def test_unknown_key_in_preset_file_is_named(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("retriever:\n  top_k: 3\n")
    with pytest.raises(ConfigError, match="'retriever.top_k'.*did you mean 'retriever.topk'"):
        load_config(Config, bad)


# ----------------------------------------------------------------------------- to_yaml / describe


@pytest.mark.parametrize("name", preset_names())
def test_to_yaml_round_trips_each_preset(tmp_path, name):
    cfg = load_config(Config, name)
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(Config, path) == cfg


def test_to_yaml_round_trips_awkward_strings(tmp_path):
    cfg = load_config(
        Config,
        overrides=[
            "retriever.url=http://h:8000/x#frag",
            "index.corpus='yes'",          # a string YAML 1.1 would otherwise read as a bool
            "index.dense.encoder.query_prefix='query: '",
            "index.dense.encoder.passage_prefix='\"quoted\" # not a comment'",
            "retriever.backoff_s=1e-6",
        ],
    )
    assert cfg.index.corpus == "yes"
    assert cfg.index.dense.encoder.query_prefix == "query: "
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(Config, path) == cfg


def test_to_yaml_writes_help_as_comments():
    text = to_yaml(Small())
    lines = text.splitlines()
    assert lines[0] == "# how many"
    assert lines[1] == "count: 3"
    assert "inner:" in lines
    assert "  # a rate" in lines
    assert "  rate: 0.5" in lines


def test_describe_lists_every_leaf_key_with_type_default_and_help():
    text = describe(Small)
    keys = [line.split(" (")[0].strip() for line in text.splitlines() if not line.startswith("      ")]
    assert keys == ["count", "name", "mode", "tags", "limit", "inner.rate", "inner.flag"]
    assert "  count (int, default 3)\n      how many" in text
    assert "mode (one of fast/slow, default 'fast')" in text
    assert "inner.flag (bool, default False)" in text


def test_describe_root_config_covers_nested_sections():
    text = describe(Config)
    for key in ("index.bm25.k1 (float, default 0.9)", "server.port (int, default 8000)",
                "index.dense.encoder.model (str,", "world.seed (int, default 0)"):
        assert key in text
