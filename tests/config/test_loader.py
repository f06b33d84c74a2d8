"""Layering, typed overrides, error messages, dump/flatten round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wmtp.config.fields import iter_fields
from wmtp.config.loader import (
    REPO_ROOT,
    ConfigError,
    deep_merge,
    dump_config,
    flatten_config,
    is_secret_key,
    load_config,
    load_config_text,
    parse_override,
)
from wmtp.config.schema import WMTPConfig

RECIPES = ["baseline", "ref_tuning", "critic", "verifiable", "rho1_weighted"]
DEFAULTS = str(REPO_ROOT / "configs" / "defaults.yaml")


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_defaults_yaml_spells_out_every_schema_field_at_its_default():
    raw = yaml.safe_load(Path(DEFAULTS).read_text())
    flat_raw = flatten_config(raw)
    assert set(flat_raw) == {key for key, _ in iter_fields()}
    assert load_config(DEFAULTS) == WMTPConfig()


def test_layers_apply_in_order(tmp_path):
    base = write(tmp_path / "d.yaml", "optim: {lr: 0.1, critic_lr: 0.2}\ntrain: {steps: 5}\n")
    recipe = write(tmp_path / "recipe.critic.yaml", "optim: {lr: 0.3}\ntrain: {eval_every: 7}\n")
    preset = write(tmp_path / "p.yaml", "optim: {lr: 0.5}\nmodel: {preset: tiny}\n")
    cfg = load_config(base, recipe, preset, use_micro_model=True, overrides=["optim.lr=0.7"])
    assert cfg.recipe == "critic"  # inferred from the recipe file name when the file omits it
    assert cfg.optim.lr == 0.7 and cfg.optim.critic_lr == 0.2  # deep merge keeps siblings
    assert cfg.train.steps == 5 and cfg.train.eval_every == 7
    assert cfg.model.preset == "micro"  # --use-micro-model beats the preset
    assert cfg.run.preset == "p"
    assert load_config(base, recipe, preset).model.preset == "tiny"
    assert load_config(base, recipe, preset).optim.lr == 0.5
    assert load_config(base, recipe).optim.lr == 0.3


def test_recipe_and_preset_by_name():
    cfg = load_config(DEFAULTS, "verifiable", "local-light")
    assert cfg.recipe == "verifiable" and cfg.run.preset == "local-light" and cfg.model.preset == "micro"
    with pytest.raises(ConfigError, match="unknown preset 'nope'; allowed: a100x4, a100x4-1b, local-light"):
        load_config(DEFAULTS, preset="nope")
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; allowed: baseline, critic"):
        load_config(DEFAULTS, "nope")


@pytest.mark.parametrize("text,expected", [
    ("a.b=1", {"a": {"b": 1}}),
    ("a=0.1", {"a": 0.1}),
    ("a=1e-3", {"a": 0.001}),
    ("a=-2.5E+2", {"a": -250.0}),
    ("a=true", {"a": True}),
    ("a=null", {"a": None}),
    ("a=", {"a": None}),
    ("a=[1,2]", {"a": [1, 2]}),
    ("a=[]", {"a": []}),
    ("a={x: 1}", {"a": {"x": 1}}),
    ("a=s3://bucket/key", {"a": "s3://bucket/key"}),
    ("a=hello world", {"a": "hello world"}),
    ("a='1'", {"a": "1"}),
])
def test_override_typing(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["noequals", "=1", "a..b=1", "a b=1"])
def test_bad_override_syntax(text):
    with pytest.raises(ConfigError, match="bad override"):
        parse_override(text)


def test_overrides_reach_typed_fields():
    cfg = load_config(DEFAULTS, "verifiable", overrides=[
        "tracking.backends=[stdout]", "optim.grad_clip=null", "model.head_coefficients=null",
        "stage2.value_weighting.weight_temperature=0.5", "data.batch_size=3", "model.params.dim=96",
        "orchestration.enabled=false", "optim.betas=[0.8,0.9]"])
    assert cfg.tracking.backends == ["stdout"] and cfg.optim.grad_clip is None
    assert cfg.stage2.value_weighting.weight_temperature == 0.5 and cfg.data.batch_size == 3
    assert cfg.model.params == {"dim": 96} and isinstance(cfg.model.params["dim"], int)
    assert cfg.orchestration.enabled is False and cfg.optim.betas == (0.8, 0.9)


def test_deep_merge_replaces_lists_and_scalars_and_merges_dicts():
    origins: dict[str, str] = {}
    a = deep_merge({}, {"x": {"y": [1, 2], "z": 1}, "w": {"k": 1}}, origins, "A")
    b = deep_merge(a, {"x": {"y": [3]}, "w": None}, origins, "B")
    assert b == {"x": {"y": [3], "z": 1}, "w": None}
    assert a == {"x": {"y": [1, 2], "z": 1}, "w": {"k": 1}}  # inputs untouched
    assert origins["x.y"] == "B" and origins["x.z"] == "A" and "w.k" not in origins


def test_unknown_key_names_full_path_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config(DEFAULTS, overrides=["foo.bar=1"])
    assert "unknown key foo.bar" in str(e.value) and "allowed keys at the top level:" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(DEFAULTS, overrides=["stage2.value_weighting.weigth_clip_max=3"])
    msg = str(e.value)
    assert "unknown key stage2.value_weighting.weigth_clip_max" in msg
    assert "allowed keys under stage2.value_weighting: ema_momentum, ema_warmup_steps, gae_gamma" in msg
    assert "did you mean stage2.value_weighting.weight_clip_max?" in msg


def test_bad_literal_lists_allowed_values_and_layer():
    with pytest.raises(ConfigError) as e:
        load_config(DEFAULTS, "verifiable", overrides=["stage2.value_weighting.td_error_normalization=minmax"])
    msg = str(e.value)
    assert "stage2.value_weighting.td_error_normalization" in msg and "'minmax'" in msg
    assert "one of 'zscore', 'ema', 'none'" in msg
    assert "override 'stage2.value_weighting.td_error_normalization=minmax'" in msg


def test_bounds_are_named(tmp_path):
    recipe = write(tmp_path / "recipe.verifiable.yaml",
                   "stage2:\n  value_weighting:\n    weight_clip_min: -0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(DEFAULTS, recipe)
    msg = str(e.value)
    assert "stage2.value_weighting.weight_clip_min" in msg and "-0.5" in msg and ">= 0" in msg
    assert str(recipe) in msg  # the layer that set it


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="weight_clip_min=6.0 must be <= weight_clip_max=5.0"):
        load_config(DEFAULTS, overrides=["stage2.value_weighting.weight_clip_min=6"])
    with pytest.raises(ConfigError, match="unknown model preset 'huge'; allowed: micro"):
        load_config(DEFAULTS, overrides=["model.preset=huge"])
    with pytest.raises(ConfigError, match="unknown params.json field.* dimm"):
        load_config(DEFAULTS, overrides=["model.params={dimm: 8}"])
    with pytest.raises(ConfigError, match="head_coefficients has 2 entries but the model has 4 head"):
        load_config(DEFAULTS, overrides=["model.preset=7b-mtp4", "model.head_coefficients=[0.5,0.5]"])
    cfg = load_config(DEFAULTS, overrides=["model.n_future_tokens=2", "model.head_coefficients=[0.7,0.3]"])
    assert cfg.model.head_coefficients == [0.7, 0.3]


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = write(tmp_path / "recipe.bad.yaml", "recipe: baseline\noptim:\n  lr: [1, 2\n  warmup_steps: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(DEFAULTS, bad)
    assert f"{bad}:" in str(e.value) and "YAML syntax error" in str(e.value)
    line = int(str(e.value).split(f"{bad}:")[1].split(":")[0])
    assert line == 4
    not_a_mapping = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(not_a_mapping)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_configs_found_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/defaults.yaml", "configs/recipe.rho1_weighted.yaml", "a100x4")
    assert cfg.recipe == "rho1_weighted" and cfg.model.preset == "7b-mtp4"


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("preset", [None, "local-light", "a100x4"])
def test_dump_round_trips(recipe, preset):
    cfg = load_config(DEFAULTS, recipe, preset, overrides=["model.params={dim: 64, n_heads: 4}"])
    text = dump_config(cfg)
    assert load_config_text(text) == cfg
    assert yaml.safe_load(text)["recipe"] == recipe


def test_flatten_is_dotted_strings_and_redacts_secrets():
    cfg = load_config(DEFAULTS, "verifiable", "a100x4")
    flat = flatten_config(cfg)
    assert flat["stage2.value_weighting.weight_clip_max"] == "5.0"
    assert flat["tracking.backends"] == "[stdout, mlflow, jsonl]"
    assert flat["model.n_future_tokens"] == "null" and flat["model.tokenizer"] == "null"
    assert all(isinstance(v, str) for v in flat.values())
    tree = {"storage": {"aws_secret_access_key": "AKIA-SECRET-1", "password": "hunter2", "hf_token": "tok-9",
                        "aws_access_key_id": "id-7", "credentials_file": "/c", "endpoint": "http://x"},
            "data": {"max_tokens": 5}}
    flat = flatten_config(tree)
    for secret in ("AKIA-SECRET-1", "hunter2", "tok-9", "id-7", "/c"):
        assert secret not in flat.values()
    assert flat["storage.endpoint"] == "http://x" and flat["data.max_tokens"] == "5"
    assert is_secret_key("a.db_password") and is_secret_key("x.api_token") and not is_secret_key("model.tokenizer")
