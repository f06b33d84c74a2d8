"""Every command the README and docs/*.md show is run by a test, or says why none can: a command in
the docs that no test runs is a bug (tests/test_doc_references.py checks the paths they cite).

`doc_commands()` collects them: each line of a ```bash block (continuations joined, a trailing
`# comment` dropped) and each inline `code` span that is a whole command (a program such as
`wmtp`, `ray`, `python`, `mlflow`, ... with at least one flag, path or `key=value`).

- RUN_BY: the test that runs the command. The test runs it as written, or adapted as its module
  says (free ports and `--address` on a shared machine, a temporary `WMTP_HOME`, `key=value`
  overrides for a few steps, a benchmark's tiny sizes, an instance of a usage form with `<...>`);
  its file quotes every path the command names, or reads the command from the doc itself.
- CHEAP: those run here, as written, in this process (seconds each).
- NOT_RUN: why no test can run it here (a cloud account, GPUs, a package install, the slow tier).

A new command in a doc fails `test_every_doc_command_is_accounted_for` until it is added to one.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from wmtp.cli import main

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = ("wmtp", "python", "python3", "ray", "mlflow", "curl", "bash", "pip", "kubectl", "docker", "prometheus",
            "grafana-server", "cp", "apt-get", "git", "ls", "export")
PREFIXES = (".venv/bin/", "./scripts/", ". .venv/", "WMTP_HOME=")


def _is_command(span: str) -> bool:
    first, _, rest = span.partition(" ")
    if not rest or not (first in PROGRAMS or span.startswith(PREFIXES)):
        return False
    return bool(re.search(r"(^|\s)(-|\S*[/=])", rest))


def doc_commands() -> dict[str, str]:
    """Command -> the first doc (README.md, docs/NAME.md) that shows it."""
    found: dict[str, str] = {}
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        name = str(doc.relative_to(REPO))
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+", " ", re.sub(r"\s+#.*$", "", line)).strip()
                if line and not line.startswith("#"):
                    found.setdefault(line, name)
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`\n]+)`", prose):
            if _is_command(span.strip()):
                found.setdefault(span.strip(), name)
    return found


HERE = "tests/test_doc_commands.py::test_cheap_doc_command_runs"
CHEAP = [
    "python -m wmtp --config configs/defaults.yaml --recipe configs/recipe.verifiable.yaml --preset local-light "
    "--use-micro-model --dry-run",
    "python -m wmtp config show --recipe verifiable --preset a100x4 stage2.value_weighting.weight_temperature=0.5",
    "python -m wmtp config validate --recipe rho1_weighted rho1.ratio=0.4",
    "wmtp train --recipe configs/recipe.verifiable.yaml --preset a100x4 --dry-run --cluster cluster/a100x4.yaml",
    "python -m wmtp study --spec configs/study.micro.yaml --dry-run",
    "python -c \"from wmtp.model.memory import count_parameters; from wmtp.model.args import PRESETS; "
    "print({k: count_parameters(v) for k, v in PRESETS.items()})\"",
]

WALKTHROUGH = "tests/orchestration/test_job_submit.py::test_local_cluster_walkthrough_submit_restart_resume_and_sweep"
CONSOLE_LOCAL = "tests/tracking/test_console_cli.py::test_readme_main_command_local_is_quiet_and_ends_with_the_summary"
BENCH = "tests/benchmarks/test_scripts.py::test_benchmark_runs_tiny"
TRACE = "tests/parallel/test_trace.py::test_cli_dry_run_trace_of_a_small_preset_matches_the_formula"
EVAL_CLI = "tests/evaluation/test_runner.py::test_cli_end_to_end_with_checkpoint_and_mlflow"
SCREENSHOTS = "tests/tracking/test_mlflow_ui_screenshots.py::test_screenshots_of_the_experiment_run_metrics_and_heatmap_pages"
RUN_BY: dict[str, str] = {
    **{command: HERE for command in CHEAP},
    # README
    "./scripts/setup.sh && .venv/bin/wmtp train --recipe configs/recipe.verifiable.yaml --preset local-light":
        CONSOLE_LOCAL,
    ".venv/bin/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db": WALKTHROUGH,
    "python benchmarks/startup.py --main-job": "tests/benchmarks/test_scripts.py::test_startup_times_the_readme_main_job",
    "wmtp train --recipe configs/recipe.baseline.yaml --preset local-light":
        "tests/orchestration/test_recipes_on_ray.py::test_baseline_on_two_workers_equals_one_process",
    "wmtp train --recipe configs/recipe.critic.yaml --preset local-light":
        "tests/recipes/test_golden.py::test_golden_per_step_metrics",
    "wmtp train --recipe configs/recipe.verifiable.yaml --preset local-light": CONSOLE_LOCAL,
    "wmtp train --recipe configs/recipe.ref_tuning.yaml --preset local-light":
        "tests/recipes/test_golden.py::test_golden_per_step_metrics",
    "wmtp train --recipe configs/recipe.rho1_weighted.yaml --preset local-light":
        "tests/recipes/test_golden.py::test_golden_per_step_metrics",
    "wmtp study --spec configs/study.micro.yaml": "tests/study/test_study.py::test_full_micro_study",
    "wmtp study --spec <spec> --report-only": "tests/study/test_study.py::test_tiny_study_end_to_end",
    "python -m wmtp.trace.memory": "tests/parallel/test_trace.py::test_hsdp_trace_on_two_nodes_of_four_ranks",
    ".venv/bin/python -m mypy": "tests/test_types.py::test_wmtp_type_checks",
    "wmtp eval --checkpoint DIR --benchmark humaneval|synthetic --n 20 --k 1,5,10": EVAL_CLI,
    "wmtp tune --recipe configs/recipe.verifiable.yaml --space tune_spaces/verifiable.yaml": WALKTHROUGH,
    "bash benchmarks/gpu_check.sh":
        "tests/benchmarks/test_gpu_check.py::test_the_script_refuses_full_shapes_without_a_gpu",
    # docs/BENCHMARKS.md: each script at tiny sizes (the documented sizes take minutes; results recorded)
    "python benchmarks/startup.py --steps 10 --repeats 3": "tests/benchmarks/test_scripts.py::test_slow_benchmark_runs_tiny",
    "python benchmarks/startup.py --steps 10 --paths ray": "tests/benchmarks/test_scripts.py::test_slow_benchmark_runs_tiny",
    "python benchmarks/gae.py": BENCH,
    "python benchmarks/mtp_ce.py --batch 2 --seq 256 --threads 1 --repeats 5 --memory-repeats 1": BENCH,
    "python benchmarks/mtp_memory.py --repeats 1": BENCH,
    "python benchmarks/sandbox.py --repeats 3": BENCH,
    "python benchmarks/decode.py --train-steps 100 --batch-size 8 --seq-len 160 --threads 1 --prompts 4 "
    "--max-new-tokens 48 --repeats 30": BENCH,
    "python benchmarks/experience_overlap.py --rounds 3 --steps 16 --warmup 4":
        "tests/benchmarks/test_scripts.py::test_ray_benchmark_runs_tiny",
    "python benchmarks/ray_overhead.py --steps 40 --rounds 4": "tests/benchmarks/test_scripts.py::test_ray_benchmark_runs_tiny",
    "python benchmarks/trace_check.py --device cpu --recipe baseline model.params.dim=128 model.params.n_layers=5 "
    "model.params.n_heads=4 model.params.n_kv_heads=4 data.max_seq_len=64": BENCH,
    "wmtp train --local": CONSOLE_LOCAL,
    # docs/CLUSTER.md section 0 (the test runs the section's list, read from the doc)
    "wmtp train --recipe configs/recipe.verifiable.yaml --preset local-light --dry-run": WALKTHROUGH,
    ". .venv/bin/activate": WALKTHROUGH,
    "export RAY_AUTH_MODE=token": WALKTHROUGH,
    "ray get-auth-token --generate": WALKTHROUGH,
    "WMTP_HOME=$PWD ray start --head --num-cpus=4 --num-gpus=0 --metrics-export-port=8080": WALKTHROUGH,
    "ray status": WALKTHROUGH,
    "ray job submit --address http://127.0.0.1:8265 --submission-id verifiable-1 --metadata-json "
    "\"{\\\"job_name\\\": \\\"verifiable-local-light\\\", \\\"git_commit\\\": \\\"$(git rev-parse HEAD)\\\"}\" "
    "--runtime-env cluster/runtime_env.yaml --working-dir . -- python -m wmtp train --recipe "
    "configs/recipe.verifiable.yaml --preset local-light": WALKTHROUGH,
    "ray job logs --address http://127.0.0.1:8265 verifiable-1": WALKTHROUGH,
    "ray job list --address http://127.0.0.1:8265": WALKTHROUGH,
    "ray stop": WALKTHROUGH,
    "ray job submit --address http://127.0.0.1:8265 --submission-id sweep-1 --metadata-json "
    "'{\"job_name\": \"tune-verifiable-local-light\"}' --runtime-env cluster/runtime_env.yaml --working-dir . "
    "-- python -m wmtp tune --recipe configs/recipe.verifiable.yaml --preset local-light --space "
    "tune_spaces/verifiable.yaml --num-samples 4 orchestration.placement=colocated": WALKTHROUGH,
    "curl -s http://127.0.0.1:8080/metrics | grep '^ray_wmtp_'": WALKTHROUGH,
    "mlflow ui --backend-store-uri sqlite:///runs/mlflow.db": WALKTHROUGH,
    "ray start --head": WALKTHROUGH,
    "ray job submit --runtime-env": WALKTHROUGH,
    "mlflow ui --backend-store-uri sqlite:///$PWD/runs/mlflow.db": WALKTHROUGH,
    # The second head of "Ports": every one of its flags, with free ports (tests/orchestration/ray_head.py)
    "ray start --head --num-cpus=4 --num-gpus=0 --port=6380 --dashboard-port=8266 --dashboard-agent-listen-port=52366 "
    "--ray-client-server-port=10002 --metrics-export-port=8081 --temp-dir=/tmp/ray2": WALKTHROUGH,
    "wmtp train --config runs/tune-verifiable-local-light/best.yaml": WALKTHROUGH,
    "bash benchmarks/gpu_check.sh --tiny": "tests/benchmarks/test_gpu_check.py::test_tiny_mode_runs_every_section_without_ray_mlflow_pydantic",
    "wmtp train ... --dry-run --trace": TRACE,
    # docs/CONFIG.md
    "python -m wmtp ...": "tests/test_cli.py::test_python_dash_m_entry_point",
    "python -m wmtp.config.reference": "tests/config/test_reference_doc.py::test_config_doc_embeds_the_current_reference",
    # docs/DASHBOARD.md
    "prometheus --config.file=/tmp/ray/session_latest/metrics/prometheus/prometheus.yml":
        "tests/orchestration/test_dashboard.py::test_prometheus_on_rays_session_config_has_the_gauges_of_a_readme_run",
    "ray list tasks --filter state=FAILED --detail --limit 10000":
        "tests/orchestration/test_tune_console.py::test_a_three_trial_sweep_prints_at_most_40_lines",
    "ray summary tasks": "tests/orchestration/test_tune_console.py::test_a_three_trial_sweep_prints_at_most_40_lines",
    # docs/DATA.md
    "wmtp data index --on-bad-line skip": "tests/data/test_commands.py::test_synth_then_index",
    "wmtp data synth --out DIR --n-problems N --seed S": "tests/data/test_commands.py::test_synth_then_index",
    "wmtp data import-codecontests A.parquet [B.parquet ...] --out train.jsonl [--languages python3]":
        "tests/data/test_commands.py::test_user_errors_are_data_errors",
    "wmtp data import-humaneval --out humaneval.jsonl": "tests/data/test_commands.py::test_import_humaneval",
    # docs/DISTRIBUTED.md, docs/MEMORY.md: the dry runs (read from the doc, or quoted) and their traces
    "wmtp train --recipe configs/recipe.verifiable.yaml --preset a100x4 --dry-run --trace orchestration.num_workers=8 "
    "orchestration.fsdp_replicas=2 orchestration.storage_path=s3://YOUR-BUCKET/wmtp/ray":
        "tests/parallel/test_trace.py::test_cluster_files_are_a100_80gb_and_the_two_node_command_validates",
    "wmtp train --recipe configs/recipe.verifiable.yaml --preset a100x4 --dry-run model.checkpoint=s3://YOUR-BUCKET/meta/"
    "7B_1T_4 orchestration.storage_path=s3://YOUR-BUCKET/wmtp/ray":
        "tests/test_distributed_doc.py::test_the_doc_figures_are_what_the_quoted_dry_runs_print",
    "wmtp train --recipe configs/recipe.verifiable.yaml --preset a100x4 --dry-run model.checkpoint=s3://YOUR-BUCKET/meta/"
    "7B_1T_4 orchestration.storage_path=s3://YOUR-BUCKET/wmtp/ray orchestration.num_workers=8 "
    "orchestration.fsdp_replicas=2": "tests/test_distributed_doc.py::test_the_doc_figures_are_what_the_quoted_dry_runs_print",
    "wmtp train --recipe configs/recipe.verifiable.yaml --preset a100x4 --dry-run model.checkpoint=s3://YOUR-BUCKET/meta/"
    "7B_1T_4": "tests/test_distributed_doc.py::test_the_rho1_reference_limitation_quotes_what_its_dry_run_prints",
    "wmtp train --recipe configs/recipe.rho1_weighted.yaml --preset a100x4 --dry-run rho1.reference=s3://YOUR-BUCKET/ref "
    "orchestration.placement=async":
        "tests/test_distributed_doc.py::test_the_rho1_reference_limitation_quotes_what_its_dry_run_prints",
    "wmtp train ... --dry-run --cluster cluster/a100x4.yaml": HERE,
    "wmtp train --recipe configs/recipe.verifiable.yaml --preset a100x4 --dry-run --trace": TRACE,
    "wmtp train --recipe configs/recipe.<recipe>.yaml --preset a100x4 --dry-run --trace [orchestration.placement=async] "
    "[stage2.critic_sync_interval=4]": "tests/parallel/test_trace.py::test_shipped_recipes_fit_and_the_formula_agrees",
    # docs/EVALUATION.md, docs/RECIPES.md
    "python -m wmtp train --local --recipe configs/recipe.<name>.yaml --preset local-light [key.sub=value ...]":
        "tests/recipes/test_golden.py::test_golden_per_step_metrics",
    "python -m wmtp data score-reference --reference runs/rho1_weighted-local-light-ref_tuning/export --recipe "
    "configs/recipe.rho1_weighted.yaml --preset local-light [--out losses.npz] [overrides]":
        "tests/recipes/test_golden.py::test_rho1_with_precomputed_reference_losses",
    "python -m wmtp train --local --recipe configs/recipe.rho1_weighted.yaml --preset local-light "
    "data.reference_losses=<that path>": "tests/recipes/test_golden.py::test_rho1_with_precomputed_reference_losses",
    "python -m wmtp study --spec configs/study.micro.yaml": "tests/study/test_study.py::test_full_micro_study",
    "wmtp eval --checkpoint runs/<run>/export --benchmark synthetic": EVAL_CLI,
    "python -m wmtp study --spec configs/study.micro.yaml --report-only":
        "tests/study/test_study.py::test_tiny_study_end_to_end",
    # docs/EVALUATION.md, docs/TRACKING.md
    "wmtp eval --samples samples.jsonl --benchmark humaneval --k 1,10":
        "tests/evaluation/test_runner.py::test_cli_samples_on_humaneval_as_the_docs_show",
    "python scripts/mlflow_screenshots.py --output-dir runs --out screenshots/ --width 1000": SCREENSHOTS,
    "python scripts/mlflow_screenshots.py --output-dir runs --run-dir runs/verifiable-local-light --out shots/":
        SCREENSHOTS,
    "python scripts/mlflow_screenshots.py --no-mlflow --run-dir runs/verifiable-local-light --prometheus "
    "http://127.0.0.1:9090 --out shots/":
        "tests/orchestration/test_dashboard.py::test_prometheus_on_rays_session_config_has_the_gauges_of_a_readme_run",
    "mlflow server --serve-artifacts": "tests/tracking/test_tracking_outage.py::test_mlflow_server_killed_mid_run_then_restarted",
}

CLOUD = "needs a GCP project with 4×A100 nodes (the launcher YAMLs are validated by tests/orchestration/test_cluster_files.py)"
K8S = "needs a Kubernetes cluster with KubeRay, a registry and a bucket (cluster/rayjob.yaml is validated by test_cluster_files.py)"
NOT_RUN: dict[str, str] = {
    "./scripts/setup.sh && .venv/bin/python -m pytest -q": "CI itself: .ci/run runs exactly this line",
    ".venv/bin/python -m pytest -m slow": "the slow tier itself (hours on 2 cores); run before releases",
    "ray job submit --working-dir . -- wmtp train ... --preset a100x4": CLOUD,
    "pip install -e '.[bench]'": "a package install (benchmark extras)",
    "pip install --no-deps torchrl tensordict pyvers hoptorch torchtune cut-cross-entropy": "a package install",
    "pip install \"ray[default]==2.60.0\" google-api-python-client": "a package install on the user's laptop",
    "ray up cluster/a100x4.yaml -y": CLOUD,
    "ray dashboard cluster/a100x4.yaml &": CLOUD,
    "ray dashboard cluster/a100x4.yaml": CLOUD,
    "ray job submit --address http://127.0.0.1:8265 --runtime-env cluster/runtime_env.yaml --working-dir . -- python -m "
    "wmtp train --recipe configs/recipe.verifiable.yaml --preset a100x4 orchestration.storage_path=s3://YOUR-BUCKET/"
    "wmtp/ray value_model.checkpoint=s3://YOUR-BUCKET/wmtp/critic/export": CLOUD,
    "ray job logs --address http://127.0.0.1:8265 --follow <job id>": CLOUD,
    "ray down cluster/a100x4.yaml -y": CLOUD,
    "ray job submit --address http://127.0.0.1:8265 --runtime-env cluster/runtime_env.yaml --working-dir . -- python -m "
    "wmtp tune --recipe configs/recipe.verifiable.yaml --preset a100x4 --space tune_spaces/verifiable.yaml "
    "orchestration.num_workers=2": CLOUD,
    "docker build -f cluster/Dockerfile -t YOUR-REGISTRY/wmtp:2.60.0-gpu . && docker push YOUR-REGISTRY/wmtp:2.60.0-gpu":
        K8S,
    "git archive -o wmtp.zip HEAD && aws s3 cp wmtp.zip s3://YOUR-BUCKET/wmtp/wmtp.zip": K8S,
    "kubectl create secret generic wmtp-aws --from-literal=AWS_ACCESS_KEY_ID=... "
    "--from-literal=AWS_SECRET_ACCESS_KEY=...": K8S,
    "kubectl create secret generic wmtp-ray-token --from-literal=token=\"$(python -c 'import uuid; "
    "print(uuid.uuid4().hex)')\"": K8S,
    "kubectl apply -f cluster/rayjob.yaml": K8S,
    "kubectl get rayjob wmtp-verifiable -w": K8S,
    "kubectl port-forward svc/<raycluster>-head-svc 8265": K8S,
    "kubectl get secret wmtp-ray-token -o jsonpath='{.data.token}' | base64 -d": K8S,
    "pip install \"torch>=2.8,<=2.14.1\" numpy --index-url https://download.pytorch.org/whl/cu128":
        "a CUDA torch install on a GPU machine",
    "apt-get install -y prometheus": "a system package install (test_dashboard.py uses the binary when present)",
    "cp cluster/grafana/wmtp_dashboard.json /tmp/ray/session_latest/metrics/grafana/dashboards/":
        "Grafana has no package in this machine's sources (docs/DASHBOARD.md); the JSON is checked by "
        "tests/orchestration/test_grafana_dashboard.py",
    "grafana-server --config /tmp/ray/session_latest/metrics/grafana/grafana.ini web": "Grafana: as above",
    "ray start --address=<head> --resources='{\"wmtp_experience\": N}'": "needs a second machine to join the head",
    "python -I": "names the sandbox's interpreter flag, not a command to run",
    "wmtp study --spec configs/study.a100x4.yaml":
        "hours on 4×A100; its dry run: tests/study/test_study.py::test_shipped_spec_dry_run",
    "apt-get install -y chromium": "a system package install (the screenshot tests use it when present)",
    "wmtp tune --verbose": "a second sweep only to see Ray Tune's own tables costs CI minutes; "
                           "tests/orchestration/test_tune_console.py checks they are absent without the flag",
}


def test_every_doc_command_is_accounted_for():
    commands = doc_commands()
    both = set(RUN_BY) & set(NOT_RUN)
    assert not both, f"both run and not run: {sorted(both)}"
    missing = {c: doc for c, doc in commands.items() if c not in RUN_BY and c not in NOT_RUN}
    assert not missing, f"commands no test runs (add each to RUN_BY, CHEAP or NOT_RUN): {missing}"
    stale = sorted((set(RUN_BY) | set(NOT_RUN)) - set(commands))
    assert not stale, f"no longer in any doc: {stale}"


def _paths(command: str) -> list[str]:
    """The repository paths a command names (what a test that runs it must quote)."""
    out = []
    for token in re.split(r"[\s\"'=]+", command):
        if re.match(r"(configs|tune_spaces|cluster|benchmarks|scripts)/[\w./-]+$", token):
            out.append(token)
    return out


def _quoted(path: str, text: str) -> bool:
    """The test names the path, its file name, or its identifying word as a string: `"baseline"`
    for configs/recipe.baseline.yaml (tests that build a recipe by name), `"decode"` for
    benchmarks/decode.py (tests that run each script by name)."""
    word = Path(path).name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    return path in text or Path(path).name in text or f'"{word}"' in text or f"'{word}'" in text


def test_each_named_test_exists_and_quotes_the_command():
    commands = doc_commands()
    problems = []
    for command, target in RUN_BY.items():
        file, _, test = target.partition("::")
        path = REPO / file
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if not re.search(rf"^(async )?def {re.escape(test)}\(", text, flags=re.M):
            problems.append(f"{target}: no such test")
            continue
        doc = Path(commands.get(command, "")).name
        if doc and doc in text:  # the test reads the doc's commands itself
            continue
        unquoted = [p for p in _paths(command) if not _quoted(p, text)]
        if unquoted:
            problems.append(f"{target} does not quote {unquoted} of {command!r}")
    assert not problems, "\n".join(problems)


def test_ci_runs_the_readme_test_command():
    assert "./scripts/setup.sh && .venv/bin/python -m pytest -q" in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", CHEAP, ids=lambda c: " ".join(c.split()[:5]))
def test_cheap_doc_command_runs(command, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = shlex.split(command)
    if argv[:2] == ["python", "-c"]:
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "7b-mtp4" in proc.stdout
        return
    argv = argv[3:] if argv[:3] == ["python", "-m", "wmtp"] else argv[1:]
    assert main(argv) == 0, capsys.readouterr()
    assert capsys.readouterr().out.strip()
