"""MLflow: params (flattened config, no secrets), per-step metrics, the config and heatmap
artifacts, read back through MlflowClient; the periodic pass@1 generation check."""

from __future__ import annotations

from tests.recipes.harness import recipe_config, run, series


def test_mlflow_run_reads_back(tmp_path, mlflow_sqlite, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-logged-anywhere")
    cfg = recipe_config("verifiable", tmp_path, "tracking.backends=[jsonl,mlflow]",
                        f"tracking.uri={mlflow_sqlite.uri}", "tracking.experiment=recipes-test",
                        "train.eval_every=2")
    run_directory = run(cfg)
    client = mlflow_sqlite.client()
    exp = client.get_experiment_by_name("recipes-test")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"verifiable-local-light", "verifiable-local-light-critic"}
    r = runs["verifiable-local-light"]
    params = r.data.params
    assert params["recipe"] == "verifiable" and params["optim.lr"] == str(cfg.optim.lr)
    assert params["stage2.value_loss.clip_range"] == "0.2" and params["train.steps"] == "4"
    assert params["value_model.checkpoint"].endswith("verifiable-local-light-critic/export")
    assert "not-logged-anywhere" not in repr(params)
    history = client.get_metric_history(r.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.value for m in history] == series(run_directory, "train/loss")
    for key in ("train/ce_head1", "train/value_loss", "train/value_clip_fraction", "train/weights/mean",
                "train/lr_policy", "train/lr_critic", "val/ce", "val/critic_auc"):
        assert key in r.data.metrics, key
    assert client.get_metric_history(r.info.run_id, "val/ce")[-1].step == 4
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert "config.yaml" in artifacts
    heatmaps = [a.path for a in client.list_artifacts(r.info.run_id, "heatmaps")]
    assert heatmaps == [f"heatmaps/token_weights_step00000{s}.{ext}" for s in (2, 4) for ext in ("html", "png")]
    html = client.download_artifacts(r.info.run_id, heatmaps[0], str(tmp_path / "dl"))
    assert "<html" in open(html, encoding="utf-8").read().lower()


def test_generation_eval_every_n_steps(tmp_path):
    out = run(recipe_config("baseline", tmp_path, "train.steps=3", "train.eval_every=3",
                            "train.eval_generate_every=2"))
    from wmtp.tracking.jsonl import metric_series

    logged = metric_series(out / "metrics.jsonl", "eval/pass_at_1")
    assert [s for s, _ in logged] == [2]  # its own cadence: step 2 (not a validation step), not 3
    assert 0.0 <= logged[0][1] <= 1.0
    assert series(out, "eval/n_tasks") == [8.0]
