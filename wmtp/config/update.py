"""The one way to change a resolved configuration: updates merged into its tree by the loader's
`deep_merge` (which records where each value was set) and validated once by `validate_config`,
so an error names the key, the allowed values and where it was set — the same engine as the
layered loader's `key.sub=value` overrides. Tune trials, studies, stage chaining, `ref_tuning`
and the memory trace change configs through `update_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wmtp.config.loader import ConfigError, deep_merge, validate_config
from wmtp.config.schema import WMTPConfig


def update_config(cfg: WMTPConfig, updates: Mapping[str, Any], source: str) -> WMTPConfig:
    """A copy of `cfg` with `updates` (dotted key → value, e.g. `{"run.seed": 3}`; a mapping value
    merges into that section) set and validated. `source` names who set them in errors
    (`[set in <source>]`)."""
    tree = cfg.model_dump()
    origins: dict[str, str] = {}
    for key, value in updates.items():
        node = tree
        for part in key.split(".")[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{key} does not name a config field (no section {part!r}) [set in {source}]")
            node = node[part]
        # numpy scalars (a search algorithm's values) → Python values (the schema is strict about types)
        if type(value).__module__ == "numpy" and hasattr(value, "item"):
            value = value.item()
        for part in reversed(key.split(".")):
            value = {part: value}
        tree = deep_merge(tree, value, origins, source)
    return validate_config(tree, origins)


__all__ = ["update_config"]
