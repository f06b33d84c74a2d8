"""Stage chaining for newcomers: a recipe whose input is not configured gets it made first.

verifiable needs a critic (`value_model.checkpoint`, from the `critic` recipe); rho1_weighted needs
a reference (`rho1.reference`, from `ref_tuning`) unless `data.reference_losses` is given. On local
(CPU) configurations the producing stage runs first — or is reused when its export exists — and
wmtp says so; on GPU cluster configurations a missing input is an error naming the key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from wmtp.config.paths import export_dir, run_name
from wmtp.config.schema import WMTPConfig
from wmtp.config.update import update_config
from wmtp.errors import WMTPUserError

log = logging.getLogger(__name__)

# recipe → (config key of its input, producing recipe, how the input is set from the export)
NEEDS: dict[str, tuple[str, str, Callable[[WMTPConfig, str], WMTPConfig]]] = {
    "verifiable": ("value_model.checkpoint", "critic",
                   lambda cfg, path: update_config(cfg, {"value_model.checkpoint": path}, "stage chaining")),
    "rho1_weighted": ("rho1.reference", "ref_tuning",
                      lambda cfg, path: update_config(cfg, {"rho1.reference": path}, "stage chaining")),
}


class MissingInputError(WMTPUserError, ValueError):
    """A recipe's input is not configured on a cluster configuration (user error)."""


def input_value(cfg: WMTPConfig, key: str):
    """The value of a stage input key (`value_model.checkpoint`, `rho1.reference`) in `cfg`."""
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)


def _configured(cfg: WMTPConfig, key: str) -> bool:
    if cfg.recipe == "rho1_weighted" and cfg.data.reference_losses:
        return True
    return input_value(cfg, key) is not None


def producer_config(cfg: WMTPConfig, producer: str) -> WMTPConfig:
    """The producing stage: same data, model shapes, budget and placement; its own run name."""
    name = f"{run_name(cfg)}-{producer}"
    updates: dict = {"recipe": producer, "run.name": name}
    if producer == "ref_tuning":
        updates["model.n_future_tokens"] = 1
    return update_config(cfg, updates, "stage chaining")


def resolve_inputs(cfg: WMTPConfig, run: Callable[[WMTPConfig], dict]) -> WMTPConfig:
    """Return `cfg` with its input set, running the producing stage with `run` when needed."""
    if cfg.recipe not in NEEDS:
        return cfg
    key, producer, set_input = NEEDS[cfg.recipe]
    if _configured(cfg, key):
        return cfg
    if cfg.orchestration.use_gpu:
        raise MissingInputError(
            f"{key} is not set: recipe {cfg.recipe!r} needs the output of the {producer!r} recipe "
            f"(run configs/recipe.{producer}.yaml first, then pass {key}=<its run dir>/export)")
    stage = producer_config(cfg, producer)
    export = export_dir(stage)
    if (export / "params.json").exists():
        print(f"[wmtp] {cfg.recipe}: reusing {producer} output {export} for {key}", flush=True)
    else:
        print(f"[wmtp] {cfg.recipe}: {key} is not set; running the {producer!r} stage first "
              f"(run {run_name(stage)})", flush=True)
        run(stage)
    return set_input(cfg, str(export))
