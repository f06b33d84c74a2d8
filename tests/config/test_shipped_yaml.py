"""Every YAML shipped in configs/ and tune_spaces/ validates and opens with its command."""

from __future__ import annotations

import itertools

import pytest

from wmtp.config.loader import REPO_ROOT, ConfigError, load_config, read_yaml_file
from wmtp.config.tune import TuneSpace, load_tune_space

CONFIGS = REPO_ROOT / "configs"
RECIPES = sorted(p.name for p in CONFIGS.glob("recipe.*.yaml"))
PRESETS = sorted(p.stem for p in (CONFIGS / "presets").glob("*.yaml"))
SPACES = sorted((REPO_ROOT / "tune_spaces").glob("*.yaml"))


def test_the_expected_files_ship():
    assert RECIPES == [f"recipe.{n}.yaml" for n in sorted(
        ["baseline", "ref_tuning", "critic", "verifiable", "rho1_weighted"])]
    assert {"local-light", "a100x4"} <= set(PRESETS)
    assert {p.name for p in SPACES} >= {"verifiable.yaml", "rho1.yaml"}


@pytest.mark.parametrize("path", [CONFIGS / "defaults.yaml", *(CONFIGS / r for r in RECIPES),
                                  *(CONFIGS / "presets" / f"{p}.yaml" for p in PRESETS), *SPACES],
                         ids=lambda p: p.name)
def test_file_opens_with_the_command_that_runs_it(path):
    head = path.read_text().splitlines()[:4]
    assert head[0].startswith("#")
    assert any("python -m wmtp" in line for line in head), head


@pytest.mark.parametrize("recipe,preset", list(itertools.product(RECIPES, [None, *PRESETS])))
def test_every_recipe_with_every_preset_validates(recipe, preset):
    cfg = load_config(CONFIGS / "defaults.yaml", CONFIGS / recipe, preset)
    assert cfg.recipe == recipe.split(".")[1]
    assert read_yaml_file(CONFIGS / recipe)["recipe"] == cfg.recipe


def test_verifiable_recipe_carries_the_original_knobs():
    raw = read_yaml_file(CONFIGS / "recipe.verifiable.yaml")["stage2"]
    assert raw["value_loss"] == {"enabled": True, "coefficient": 0.5, "clip_range": 0.2}
    vw = raw["value_weighting"]
    assert {k: vw[k] for k in ("gae_gamma", "gae_lambda", "td_error_normalization", "weight_temperature",
                               "weight_clip_min", "weight_clip_max")} == {
        "gae_gamma": 0.99, "gae_lambda": 0.95, "td_error_normalization": "zscore", "weight_temperature": 1.0,
        "weight_clip_min": 0.1, "weight_clip_max": 5.0}
    assert {"reward", "renormalize", "ema_momentum"} <= set(vw) and "critic_sync_interval" in raw
    rho1 = read_yaml_file(CONFIGS / "recipe.rho1_weighted.yaml")["rho1"]
    assert rho1["mode"] == "topk" and rho1["ratio"] == 0.6


def test_presets_shape_the_run():
    light = load_config(CONFIGS / "defaults.yaml", "baseline", "local-light")
    assert light.model.preset == "micro" and light.orchestration.num_workers == 2
    assert not light.orchestration.use_gpu and light.data.synth_problems <= 2000
    big = load_config(CONFIGS / "defaults.yaml", "baseline", "a100x4")
    assert big.model.preset == "7b-mtp4" and big.orchestration.num_workers == 4 and big.orchestration.use_gpu
    assert big.train.precision == "bf16" and big.orchestration.fsdp and big.train.activation_checkpointing


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_tune_spaces_validate(path):
    space = load_tune_space(path)
    assert space.space and space.scheduler.type == "asha"
    if space.recipe:
        load_config(CONFIGS / "defaults.yaml", space.recipe)


def _space(**changes):
    doc = {"metric": "val/ce_head1", "mode": "min", "num_samples": 2,
           "scheduler": {"type": "asha", "max_t": 10, "grace_period": 1, "reduction_factor": 2},
           "space": {"rho1.ratio": {"type": "uniform", "lower": 0.2, "upper": 0.8}}}
    doc.update(changes)
    return doc


def test_tune_space_rejects_mistakes(tmp_path):
    assert TuneSpace.model_validate(_space()).space["rho1.ratio"].upper == 0.8
    cases = {
        "unknown key rho1.ratoi": _space(space={"rho1.ratoi": {"type": "uniform", "lower": 0.1, "upper": 0.5}}),
        "rho1.ratio=1.5": _space(space={"rho1.ratio": {"type": "uniform", "lower": 0.1, "upper": 1.5}}),
        "stage2.value_weighting.td_error_normalization='minmax'": _space(space={
            "stage2.value_weighting.td_error_normalization": {"type": "choice", "values": ["zscore", "minmax"]}}),
        "lower=0.5 must be < upper=0.1": _space(space={"rho1.ratio": {"type": "uniform", "lower": 0.5, "upper": 0.1}}),
        "grace_period=20 must be <= max_t=10": _space(scheduler={"type": "asha", "max_t": 10, "grace_period": 20}),
        "stage2 is a section": _space(space={"stage2": {"type": "choice", "values": [1]}}),
        "both searched and fixed": _space(fixed={"rho1.ratio": 0.5}),
        "unknown key trials": {**_space(), "trials": 3},
        "mode": _space(mode="lowest"),
    }
    for i, (needle, doc) in enumerate(cases.items()):
        import yaml
        path = tmp_path / f"space{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError) as e:
            load_tune_space(path)
        assert needle in str(e.value) and str(path) in str(e.value), (needle, str(e.value))
