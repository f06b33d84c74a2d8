"""YAML layering, dotted overrides, validation with errors that name the key.

Layers, later wins (dicts merge deeply; lists and scalars replace):

    configs/defaults.yaml → configs/recipe.<name>.yaml → configs/presets/<name>.yaml
    → flags (--use-micro-model: model.preset=micro) → key.sub=value overrides

The merged tree is validated once against `WMTPConfig`. Every mistake raises `ConfigError`
whose message names the full key path, the bad value, what is allowed, and which layer set it.
"""
# One module (over 300 lines): layering, overrides, origins and error messages are one merge: each error names where its value was set.

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from wmtp.config.fields import field_at, section_at
from wmtp.config.redaction import REDACTED
from wmtp.config.schema import WMTPConfig
from wmtp.errors import WMTPUserError


class ConfigError(WMTPUserError, ValueError):
    """A user mistake in configuration: the CLI prints the message and exits 2, no traceback."""


# ---------------------------------------------------------------------------------------------
# YAML with YAML-1.2-style floats: PyYAML (YAML 1.1) reads `1e-3` as a string, which silently
# breaks untyped fields such as model.params; this resolver makes `1e-3`, `3E+4` floats.
class _Loader(yaml.SafeLoader):
    pass


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in "-+0123456789.":
    _Loader.yaml_implicit_resolvers[_ch] = [
        (tag, rx) for tag, rx in _Loader.yaml_implicit_resolvers.get(_ch, []) if tag != "tag:yaml.org,2002:float"
    ]
    _Loader.yaml_implicit_resolvers[_ch].append(("tag:yaml.org,2002:float", _FLOAT))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes a ConfigError naming `source:line:column`."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise ConfigError(f"{where}: YAML syntax error: {detail}") from None


def read_yaml_file(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is `{}`)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path}: not a regular file (a directory?); expected a YAML config file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8); expected a YAML config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (it holds NUL bytes); expected a YAML config file")
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# Where config files live: CWD first (a user's own checkout), then the repository that holds
# this package (editable installs and `python -m wmtp` from anywhere).
REPO_ROOT = Path(__file__).resolve().parents[2]


def config_search_roots() -> list[Path]:
    roots = [Path.cwd(), REPO_ROOT]
    return list(dict.fromkeys(roots))


def find_config_file(path: str | Path) -> Path:
    """Resolve `path` as given, else relative to each search root; error lists where it looked."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        return p
    tried = []
    for root in config_search_roots():
        candidate = root / p
        tried.append(str(candidate))
        if candidate.exists():
            return candidate
    raise ConfigError(f"config file not found: {path} (looked in: {', '.join(tried)})")


def configs_dir() -> Path:
    """The `configs/` folder used for names such as `--recipe verifiable` or `--preset a100x4`."""
    return find_config_file("configs")


def available_presets() -> list[str]:
    try:
        folder = configs_dir() / "presets"
    except ConfigError:
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def available_recipes() -> list[str]:
    try:
        folder = configs_dir()
    except ConfigError:
        return []
    return sorted(p.name[len("recipe."):-len(".yaml")] for p in folder.glob("recipe.*.yaml"))


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A recipe file path, or a bare recipe name (`verifiable` → configs/recipe.verifiable.yaml)."""
    text = str(recipe)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        return find_config_file(text)
    candidate = configs_dir() / f"recipe.{text}.yaml"
    if not candidate.exists():
        raise ConfigError(f"unknown recipe {text!r}; allowed: {', '.join(available_recipes())} (or a YAML path)")
    return candidate


def resolve_preset_path(preset: str | Path) -> Path:
    """A preset name (`local-light` → configs/presets/local-light.yaml) or a YAML path."""
    text = str(preset)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        return find_config_file(text)
    candidate = configs_dir() / "presets" / f"{text}.yaml"
    if not candidate.exists():
        raise ConfigError(f"unknown preset {text!r}; allowed: {', '.join(available_presets())} (or a YAML path)")
    return candidate


# ---------------------------------------------------------------------------------------------
# Merging and overrides.
def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any], origins: dict[str, str] | None = None,
               source: str = "", prefix: str = "") -> dict[str, Any]:
    """New dict: `update` merged into `base`; nested dicts merge, anything else replaces.

    `origins` (dotted key → source label) records which layer set each value, for error messages.
    """
    out = dict(base)
    for key, value in update.items():
        key = str(key)
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value, origins, source, f"{path}.")
        else:
            out[key] = value
            if origins is not None:
                # A replaced subtree forgets where its old leaves came from.
                for k in [k for k in origins if k.startswith(f"{path}.")]:
                    del origins[k]
                origins.pop(path, None)  # re-insert: dict order is then the order layers set keys
                origins[path] = source
                if isinstance(value, Mapping):
                    _record_leaves(value, origins, source, f"{path}.")
    return out


def _record_leaves(tree: Mapping[str, Any], origins: dict[str, str], source: str, prefix: str) -> None:
    for key, value in tree.items():
        origins.pop(f"{prefix}{key}", None)
        origins[f"{prefix}{key}"] = source
        if isinstance(value, Mapping):
            _record_leaves(value, origins, source, f"{prefix}{key}.")


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_0-9][A-Za-z0-9_\-]*)*$")


def parse_override(text: str) -> dict[str, Any]:
    """`a.b.c=value` → `{"a": {"b": {"c": value}}}`, value typed as YAML.

    `1` int, `0.1` / `1e-3` float, `true` bool, `null` (or empty) None, `[1,2]` list, `{a: 1}`
    mapping, anything else a string (`s3://bucket/x` stays a string).
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError(f"bad override {text!r}: expected key.sub=value (e.g. optim.lr=1e-3)")
    value = parse_yaml(raw, override_label(text)) if raw.strip() else None
    *parents, leaf = key.split(".")
    tree: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        tree = {part: tree}
    return tree


# ---------------------------------------------------------------------------------------------
# Validation errors that name the key path, the value, the allowed values and the layer.
def _allowed_values(annotation: Any) -> list[Any] | None:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    for arg in get_args(annotation):
        found = _allowed_values(arg)
        if found:
            return found
    return None


def _bounds(field: FieldInfo) -> str:
    parts = []
    for meta in getattr(field, "metadata", []):
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(meta, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    return " and ".join(parts)


def _origin_of(path: str, origins: Mapping[str, str]) -> str | None:
    """The layer that last set `path`, one of its ancestors, or one of its descendants."""
    latest = None
    for key, source in origins.items():  # in the order the layers set them
        if key == path or path.startswith(f"{key}.") or key.startswith(f"{path}."):
            latest = source
    return latest


def _leaf_paths(value: Any, prefix: str) -> list[str]:
    if isinstance(value, Mapping) and value:
        return [leaf for k, v in value.items() for leaf in _leaf_paths(v, f"{prefix}.{k}")]
    return [prefix]


def format_validation_error(err: ValidationError, origins: Mapping[str, str] | None = None,
                            root: type[BaseModel] = WMTPConfig, what: str = "configuration") -> str:
    """One line per problem: `key.path: <what is wrong> (got <value>; allowed: ...) [set in <layer>]`."""
    origins = origins or {}
    lines = []
    for item in err.errors():
        loc = [p for p in item["loc"]]
        path = ".".join(str(p) for p in loc) or "<top level>"
        src = _origin_of(path, origins)
        where = f" [set in {src}]" if src else ""
        if item["type"] == "extra_forbidden":
            parent = loc[:-1]
            section = section_at(parent, root)
            allowed = sorted(section.model_fields) if section else []
            under = f"under {'.'.join(map(str, parent))}" if parent else "at the top level"
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean {'.'.join(map(str, [*parent, close[0]]))}?" if close else ""
            # Name the full dotted paths the user wrote (foo.bar), not only the unknown section.
            leaves = _leaf_paths(item.get("input"), path)
            shown = ", ".join(leaves[:5]) + (f" (+{len(leaves) - 5} more)" if len(leaves) > 5 else "")
            lines.append(f"unknown key {shown}{where}; allowed keys {under}: {', '.join(allowed)}{hint}")
            continue
        field = field_at([p for p in loc if isinstance(p, str)], root)
        allowed = []
        if field is not None:
            choices = _allowed_values(field.annotation)
            if choices:
                allowed.append("one of " + ", ".join(repr(c) for c in choices))
            bounds = _bounds(field)
            if bounds:
                allowed.append(bounds)
        got = item.get("input")
        got_text = "" if isinstance(got, dict) and item["type"] != "model_type" else f" (got {got!r})"
        if got_text and is_secret_key(path, got):
            got_text = f" (got {REDACTED})"  # never echo a credential back
        allowed_text = f"; allowed: {'; '.join(allowed)}" if allowed else ""
        msg = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {msg}{got_text}{allowed_text}{where}")
    return f"invalid {what}:\n  " + "\n  ".join(lines)


def validate_config(tree: Mapping[str, Any], origins: Mapping[str, str] | None = None) -> WMTPConfig:
    try:
        return WMTPConfig.model_validate(move_tracking_credentials(tree))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origins)) from None


# ---------------------------------------------------------------------------------------------
def load_config(config_path: str | Path | None = "configs/defaults.yaml", recipe_path: str | Path | None = None,
                preset: str | Path | None = None, use_micro_model: bool = False,
                overrides: Iterable[str] = ()) -> WMTPConfig:
    """Resolve the layered configuration (module docstring) and validate it once.

    config_path: the defaults file (searched in CWD, then the repository); None = schema defaults.
    recipe_path / preset: a YAML path or a bare name (`verifiable`, `local-light`).
    """
    origins: dict[str, str] = {}
    tree: dict[str, Any] = {}
    if config_path is not None:
        path = find_config_file(config_path)
        tree = deep_merge(tree, read_yaml_file(path), origins, str(config_path))
    if recipe_path is not None:
        path = resolve_recipe_path(recipe_path)
        layer = read_yaml_file(path)
        name = path.name
        if "recipe" not in layer and name.startswith("recipe.") and name.endswith(".yaml"):
            layer = {"recipe": name[len("recipe."):-len(".yaml")], **layer}
        tree = deep_merge(tree, layer, origins, str(recipe_path))
    if preset is not None:
        path = resolve_preset_path(preset)
        layer = read_yaml_file(path)
        label = str(preset) if str(preset).endswith((".yaml", ".yml")) else f"preset {preset}"
        tree = deep_merge(tree, layer, origins, label)
        if not isinstance(layer.get("run"), dict) or "preset" not in layer["run"]:
            tree = deep_merge(tree, {"run": {"preset": Path(str(preset)).stem}}, origins, label)
    if use_micro_model:
        tree = deep_merge(tree, {"model": {"preset": "micro"}}, origins, "--use-micro-model")
    for text in overrides:
        tree = deep_merge(tree, parse_override(text), origins, override_label(text))
    return validate_config(tree, origins)


def override_label(text: str) -> str:
    """How an override is named in messages: its text, or `key=<redacted>` when the key or the
    value looks like a credential (error messages must not echo secrets)."""
    from wmtp.config.redaction import is_secret

    key, _, raw = text.partition("=")
    return f"override '{key.strip()}={REDACTED}'" if is_secret(key.strip(), raw) else f"override {text!r}"


def move_tracking_credentials(tree: Mapping[str, Any]) -> Mapping[str, Any]:
    """`tracking.uri` with `user:password@` → the URI without them; the credentials go to
    MLflow's own variables `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` of this process
    (inherited by the local Ray cluster it starts). So the config — config.yaml, its artifact,
    params, mlflow_run.json, console lines — never holds them (docs/TRACKING.md "Credentials")."""
    import os

    from wmtp.config.redaction import split_uri_credentials

    tracking = tree.get("tracking") if isinstance(tree, Mapping) else None
    uri = tracking.get("uri") if isinstance(tracking, Mapping) else None
    if not isinstance(tracking, Mapping) or not isinstance(uri, str):  # uri is a str only in a mapping
        return tree
    clean, user, password = split_uri_credentials(uri)
    if clean == uri:
        return tree
    if user:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    return {**tree, "tracking": {**tracking, "uri": clean}}


def dump_config(cfg: WMTPConfig) -> str:
    """The resolved config as YAML (field order of the schema); `load_config` of it gives `cfg`.
    Secret-looking values (by key or value, e.g. an s3:// URI with a key in it) are written as
    `<redacted>`: config.yaml and its artifact copy never hold a credential."""
    def scrub(node: Any, prefix: str) -> Any:
        if isinstance(node, Mapping):
            return {k: scrub(v, f"{prefix}{k}.") for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v, prefix) for v in node]
        return REDACTED if isinstance(node, str) and is_secret_key(prefix[:-1], node) else node

    return yaml.safe_dump(scrub(cfg.model_dump(mode="json"), ""), sort_keys=False, default_flow_style=None,
                          width=100)


def load_config_text(text: str, source: str = "<text>") -> WMTPConfig:
    """Validate a YAML document holding a whole config (e.g. a run's saved resolved config)."""
    data = parse_yaml(text, source) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    return validate_config(data, {})


def is_secret_key(dotted_key: str, value: Any = None) -> bool:
    """True for entries whose values must never reach params, logs or artifacts (one rule for
    the whole project: `wmtp.config.redaction.is_secret`, by key and by value)."""
    from wmtp.config.redaction import is_secret

    return is_secret(dotted_key, value)


def flatten_config(cfg: WMTPConfig | Mapping[str, Any]) -> dict[str, str]:
    """Dotted keys → string values for MLflow params; secret-looking keys are redacted."""
    tree = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else dict(cfg)
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
            return
        key = prefix[:-1]
        if is_secret_key(key, node):
            out[key] = REDACTED
        elif isinstance(node, Mapping):
            out[key] = "{}"
        elif isinstance(node, str):
            out[key] = node
        else:
            out[key] = yaml.safe_dump(node, default_flow_style=True, width=10_000).strip().removesuffix("\n...")
    walk(tree, "")
    return out


__all__ = [
    "ConfigError", "load_config", "dump_config", "flatten_config", "parse_override", "deep_merge",
    "validate_config", "load_config_text", "read_yaml_file", "parse_yaml", "find_config_file",
    "resolve_recipe_path", "resolve_preset_path", "available_presets", "available_recipes",
    "is_secret_key", "REPO_ROOT",
]
