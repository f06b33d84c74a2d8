"""The typed configuration of a wmtp run (pydantic v2; unknown keys are errors).

Every field carries a one-line description; `wmtp config show` prints the resolved tree. The
verifiable recipe's `stage2.value_loss` / `stage2.value_weighting` names are the original system's
documented interface and must not be renamed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RecipeName = Literal["baseline", "ref_tuning", "critic", "verifiable", "rho1_weighted"]


class Section(BaseModel):
    # strict: no meaning-changing coercions (a boolean is not a number of steps, "3" is not 3);
    # an int is still accepted where a float is asked. allow_inf_nan=False: no NaN/inf anywhere.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class RunConfig(Section):
    name: str | None = Field(None, description="Run name; reruns with the same name resume. Default: <recipe>-<preset>.")
    output_dir: str = Field("runs", description="Local folder holding run directories (checkpoints, logs, MLflow store).")
    seed: int = Field(0, description="Seed for model init, data order and sampling.")
    preset: str | None = Field(None, description="Name of the preset that was applied (informational).")


class ModelConfig(Section):
    preset: str = Field("micro", description="Model shape preset: micro, tiny, 1b-mtp4, 7b-mtp4, 7b-ntp.")
    n_future_tokens: int | None = Field(None, ge=1, description="Override the preset's number of MTP heads (1 = plain LLaMA).")
    params: dict[str, Any] = Field(default_factory=dict, description="Overrides of params.json fields (dim, n_layers, ...).")
    checkpoint: str | None = Field(None, description="Initial weights: a Meta/wmtp checkpoint folder, local or s3:// URI.")
    tokenizer: str | None = Field(None, description="SentencePiece tokenizer.model; default: the one wmtp trains for the bundled data.")
    head_coefficients: list[float] | None = Field(None, description="Per-head loss coefficients c_k; default 1/H each.")
    meta_device_threshold: int = Field(1_000_000_000, description="Dry-run builds models above this many parameters on the meta device.")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from wmtp.model.args import PRESETS  # a plain dataclass module: no torch

        if value not in PRESETS:
            raise ValueError(f"unknown model preset {value!r}; allowed: {', '.join(PRESETS)}")
        return value

    @field_validator("params")
    @classmethod
    def _known_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        from wmtp.model.args import ModelArgs

        allowed = [f.name for f in dataclasses.fields(ModelArgs)]
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise ValueError(f"unknown params.json field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        from wmtp.model.args import check_param_types

        check_param_types(value)
        return value

    @model_validator(mode="after")
    def _head_coefficients_match(self) -> ModelConfig:
        from wmtp.model.args import PRESETS

        heads = self.n_future_tokens or self.params.get("n_future_tokens") or PRESETS[self.preset].n_future_tokens
        if self.head_coefficients is not None and len(self.head_coefficients) != heads:
            raise ValueError(f"head_coefficients has {len(self.head_coefficients)} entries but the model has "
                             f"{heads} head(s) (model.n_future_tokens / model.preset)")
        return self


class ValueModelConfig(Section):
    head: Literal["linear", "mlp"] = Field("linear", description="Value head on the critic backbone.")
    checkpoint: str | None = Field(None, description="Critic weights (output of the critic recipe), local path or s3:// URI.")
    init_from_policy: bool = Field(True, description="Without a checkpoint, start the critic backbone from the policy trunk.")
    n_layers: int | None = Field(None, ge=1, description="Critic backbone depth; default: the policy trunk depth.")
    quality_min_final_value_auc: float = Field(
        0.7, ge=0, le=1, description="Verifiable runs warn when the critic's final-value AUC on the validation solutions is below this (0.5 = chance).")
    quality_max_decisive_td_auc: float = Field(
        0.45, ge=0, le=1, description="Verifiable runs warn when the critic's within-solution TD-error AUC at decisive tokens is above this (0.5 = blind).")
    quality_max_solutions: int | None = Field(
        None, ge=1, description="Validation solutions the critic quality report reads (null = all).")


class DataConfig(Section):
    train: str | None = Field(None, description="Training JSONL; default: the bundled synthetic task (generated on first use).")
    valid: str | None = Field(None, description="Validation JSONL; default: the bundled synthetic task's valid split.")
    test: str | None = Field(None, description="Test/evaluation JSONL (HumanEval format records).")
    synth_problems: int = Field(2000, ge=10, description="Problems generated for the bundled synthetic task.")
    synth_seed: int = Field(0, description="Seed of the synthetic task generator.")
    samples: Literal["correct", "all"] = Field("correct", description="Which solutions the policy learns from (the critic always sees all).")
    draw: Literal["recipe", "samples", "all"] = Field(
        "recipe", description="Which solutions the training stream draws: the recipe's own choice (verifiable: all, "
                              "the policy masks by `samples`; baseline, Rho-1: `samples`), only the `samples` ones, or all.")
    sampler: Literal["random", "pairwise", "difficulty_balanced", "length_balanced", "curriculum"] = Field(
        "random", description="How training batches are drawn from the metadata index.")
    max_seq_len: int = Field(128, ge=8, description="Longer samples are truncated to this many tokens.")
    batch_size: int = Field(16, ge=1, description="Sequences per micro-batch per rank.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    length_bucketing: bool = Field(False, description="Group similar lengths into a batch to cut padding.")
    on_bad_line: Literal["error", "skip"] = Field("error", description="Malformed JSONL line: stop naming file:line, or skip and count.")
    reference_losses: str | None = Field(None, description="Precomputed Rho-1 reference losses (wmtp data score-reference output).")


class OptimConfig(Section):
    lr: float = Field(3e-3, gt=0, description="Peak learning rate of the policy (AdamW).")
    critic_lr: float = Field(1e-3, gt=0, description="Peak learning rate of the critic (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not applied to norms).")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps before cosine decay.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a fraction of the peak LR.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global gradient norm to this value (null: no clipping).")

    @field_validator("betas", mode="before")
    @classmethod
    def _betas_from_list(cls, value: Any) -> Any:
        # YAML and JSON have lists, not tuples; the two numbers are still validated strictly.
        return tuple(value) if isinstance(value, list) else value


class TrainConfig(Section):
    steps: int = Field(200, ge=1, description="Optimizer steps.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 = autocast compute with fp32 master weights.")
    loss_chunk_size: int = Field(1024, ge=1, description="Tokens per chunk of the chunked, recomputed MTP cross-entropy.")
    eval_every: int = Field(50, ge=1, description="Validate every N steps.")
    eval_batches: int = Field(4, ge=1, description="Validation micro-batches per evaluation.")
    checkpoint_every: int = Field(50, ge=1, description="Save a checkpoint every N steps (and at the end).")
    log_every: int = Field(10, ge=1, description="Log metrics every N steps.")
    nonfinite: Literal["stop", "skip"] = Field("stop", description="Non-finite loss: stop (keeping the last checkpoint) or skip the batch and count it.")
    max_skipped_batches: int = Field(10, ge=0, description="With nonfinite=skip, stop after this many skipped batches.")
    max_consecutive_skipped: int = Field(5, ge=1, description="With nonfinite=skip, stop once this many batches in a row were skipped (the weights are not recovering).")
    activation_checkpointing: bool = Field(False, description="Recompute block activations in backward.")
    heatmap_samples: int = Field(4, ge=0, description="Validation samples drawn in the token-weight heatmap artifact.")
    eval_generate_every: int | None = Field(None, description="Run a small pass@1 evaluation every N steps (null: never).")
    export_formats: list[Literal["meta", "hf"]] = Field(
        ["meta", "hf"], description="Extra formats of a policy export: export/meta (Meta layout), export/hf (HF LLaMA of head 1).")


class ValueLossConfig(Section):
    enabled: bool = Field(True, description="Train the critic with the clipped value loss during stage 2.")
    coefficient: float = Field(0.5, ge=0, description="Value loss coefficient.")
    clip_range: float = Field(0.2, gt=0, description="PPO value clip range ε around V_old.")


class ValueWeightingConfig(Section):
    gae_gamma: float = Field(0.99, ge=0, le=1, description="GAE discount γ.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE λ.")
    td_error_normalization: Literal["zscore", "ema", "none"] = Field("zscore", description="Normaliser of advantages before exp.")
    weight_temperature: float = Field(1.0, gt=0, description="Temperature of w = exp(Â / T).")
    weight_clip_min: float = Field(0.1, ge=0, description="Lower clip of token weights.")
    weight_clip_max: float = Field(5.0, gt=0, description="Upper clip of token weights.")
    reward: Literal["outcome", "none"] = Field("outcome", description="outcome: terminal reward R; none: marginal value γV_j − V_{j−1}.")
    renormalize: bool = Field(True, description="Rescale weights to mean 1 over valid tokens.")
    ema_momentum: float = Field(0.99, ge=0, lt=1, description="Momentum of the EMA normaliser's running mean/std.")
    ema_warmup_steps: int = Field(10, ge=0, description="EMA normaliser uses batch statistics for this many updates.")
    shuffle: bool = Field(False, description="Control: permute each sequence's weights among its response targets (same weights, placement destroyed).")
    source: Literal["critic", "position", "uniform"] = Field(
        "critic", description="critic: GAE of the critic's values; position (control): the same GAE with V ≡ the critic's mean value, so weights depend on position and outcome only; uniform (control): every weight 1 on the same batches.")

    @model_validator(mode="after")
    def _clip_order(self) -> ValueWeightingConfig:
        if self.weight_clip_min > self.weight_clip_max:
            raise ValueError(f"weight_clip_min={self.weight_clip_min} must be <= weight_clip_max={self.weight_clip_max}")
        return self


class Stage2Config(Section):
    value_loss: ValueLossConfig = Field(default_factory=ValueLossConfig, description="Critic continual learning.")
    value_weighting: ValueWeightingConfig = Field(default_factory=ValueWeightingConfig, description="GAE/TD token weights.")
    critic_sync_interval: int = Field(1, ge=1, description="Publish critic weights to the experience side every N steps.")
    max_staleness: int = Field(2, ge=0, description="Async placement: most critic versions a scored batch may lag.")


class CriticConfig(Section):
    loss: Literal["mc_mse", "lambda_return", "pairwise"] = Field("mc_mse", description="Critic pre-training objective.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of lambda_return targets.")
    lam: float = Field(0.95, ge=0, le=1, description="λ of lambda_return targets.")


class Rho1Config(Section):
    mode: Literal["topk", "continuous"] = Field("topk", description="Select top tokens by excess loss, or weight continuously.")
    ratio: float = Field(0.6, gt=0, le=1, description="topk: fraction of valid head-k targets kept.")
    keep_first_head: bool = Field(False, description="topk: head 1 keeps all its tokens.")
    temperature: float = Field(1.0, gt=0, description="continuous: w = exp(zscore(e) / T).")
    clip_min: float = Field(0.1, ge=0, description="continuous: lower clip.")
    clip_max: float = Field(5.0, gt=0, description="continuous: upper clip.")
    reference: str | None = Field(None, description="Reference model checkpoint (output of ref_tuning), local path or s3:// URI.")
    shuffle: bool = Field(False, description="Control: permute each sequence's weights among its targets, per head (same weights, placement destroyed).")


class TrackingConfig(Section):
    backends: list[Literal["stdout", "mlflow", "jsonl"]] = Field(["stdout", "mlflow", "jsonl"], description="Metric sinks.")
    uri: str | None = Field(None, description="MLflow tracking URI; default: sqlite:///<output_dir>/mlflow.db.")
    artifact_location: str | None = Field(None, description="MLflow artifact root for new experiments (e.g. s3://bucket/mlflow).")
    experiment: str = Field("wmtp", description="MLflow experiment name.")


class OrchestrationConfig(Section):
    enabled: bool = Field(True, description="Run on Ray Train (false: in-process, the debuggable path).")
    address: str | None = Field(None, description="Ray address; null starts/joins a local cluster.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU on clusters).")
    use_gpu: bool = Field(False, description="Give each worker a GPU (NCCL) instead of CPU (gloo).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.")
    fsdp: bool = Field(True, description="Shard models with FSDP2 fully_shard (per block and per head, root last).")
    placement: Literal["colocated", "async"] = Field("colocated", description="Where the experience phase runs.")
    num_experience_actors: int = Field(1, ge=1, description="Async placement: experience actors holding critic replicas.")
    queue_depth: int = Field(2, ge=0, description="Async placement: scored batches prepared ahead of the learner.")
    experience_nodes: Literal["learner", "dedicated"] = Field(
        "learner", description="Async placement: experience actors on their learner's node (hard node affinity), "
        "or on dedicated scoring nodes started with the custom resource `wmtp_experience` (one per actor).")
    storage_path: str | None = Field(None, description="Ray Train storage (local path or s3://); default <output_dir>/ray.")
    max_failures: int = Field(1, ge=-1, description="Worker-group restarts before the run fails (-1: unlimited).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept (best by validation metric).")
    report_every: int = Field(10, ge=1, description="Call ray.train.report every N steps (and on checkpoints).")
    fsdp_replicas: int = Field(1, ge=1, description="HSDP: shard within groups of num_workers/fsdp_replicas ranks (one node), replicate across groups (1: full shard).")

    @model_validator(mode="after")
    def _multi_node_layout(self) -> OrchestrationConfig:
        from wmtp.config.topology import storage_path_problem

        if self.num_workers % self.fsdp_replicas:
            raise ValueError(f"fsdp_replicas={self.fsdp_replicas} must divide num_workers={self.num_workers}")
        # HSDP replicas are nodes: a run with fsdp_replicas > 1 spans that many nodes.
        if problem := storage_path_problem(self.storage_path, self.fsdp_replicas):
            raise ValueError(problem)
        return self


class WMTPConfig(Section):
    recipe: RecipeName = Field("baseline", description="Training recipe.")
    run: RunConfig = Field(default_factory=RunConfig, description="Run identity and seeds.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    value_model: ValueModelConfig = Field(default_factory=ValueModelConfig, description="Critic model.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data and batching.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer and LR schedule.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training loop.")
    stage2: Stage2Config = Field(default_factory=Stage2Config, description="Verifiable recipe: critic weighting and learning.")
    critic: CriticConfig = Field(default_factory=CriticConfig, description="Critic pre-training recipe.")
    rho1: Rho1Config = Field(default_factory=Rho1Config, description="Rho-1 weighting.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Experiment tracking.")
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig, description="Ray placement.")
