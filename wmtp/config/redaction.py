"""Keep secrets out of params, logs and artifacts.

Credentials reach wmtp through the environment only (boto3 and MLflow read them there). Nothing in
wmtp logs environment variables; `redact` is the last line of defence for a config that carries a
secret-looking key or value anyway (e.g. an S3 URI with an embedded key, or `aws_secret=...`
passed as a model param override).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Matched against each component of a dotted / slashed key, case-insensitive. "token" must be a
# whole word (`hf_token`, `access_token`) so that `tokenizer` or `tokens_per_s` stay visible.
_SECRET_COMPONENT = re.compile(
    r"^aws_|secret|passw(or)?d|credential|api_?key|private_?key|(^|_)token($|_)|(^|_)auth($|_)",
    re.IGNORECASE,
)
# Value patterns: AWS access key ids, URIs with user:password@, bearer tokens, private keys.
_SECRET_VALUE = re.compile(
    r"(\b(AKIA|ASIA)[A-Z0-9]{16}\b)|(://[^/\s:@]+:[^/\s@]+@)|(\bbearer\s+\S+)|(-----BEGIN [A-Z ]*PRIVATE KEY)",
    re.IGNORECASE,
)


def is_secret(key: str, value: Any) -> bool:
    """True when `key` names a credential or `value` looks like one."""
    if any(_SECRET_COMPONENT.search(part) for part in re.split(r"[./]", key)):
        return True
    return isinstance(value, str) and bool(_SECRET_VALUE.search(value))


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` without the entries that look like secrets (dropped, not masked: a masked value
    still tells an attacker which knob holds a credential and clutters run comparisons)."""
    return {k: v for k, v in params.items() if not is_secret(str(k), v)}


_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]*@)(?P<rest>.*)$", re.S)


def split_uri_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """`scheme://user:pass@host/...` → (`scheme://host/...`, user, password); URIs without
    userinfo come back unchanged with (None, None)."""
    from urllib.parse import unquote

    m = _USERINFO.match(uri)
    if not m:
        return uri, None, None
    if m["userinfo"] == f"{REDACTED}@":  # a printed command pasted back: the environment has them
        return m["scheme"] + m["rest"], None, None
    user, _, password = m["userinfo"][:-1].partition(":")
    return m["scheme"] + m["rest"], unquote(user) or None, unquote(password) if password else None


REDACTED = "<redacted>"


def redact_text(text: str) -> str:
    """`text` with URI userinfo, AWS key ids, bearer tokens and private keys masked (for messages
    and lines that must be shown: console, errors)."""
    text = re.sub(r"(://)[^/\s@]+@", r"\1<redacted>@", text)
    text = re.sub(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", "<redacted>", text)
    text = re.sub(r"(?i)\b(bearer\s+)\S+", r"\1<redacted>", text)
    return re.sub(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", "<redacted>",
                  text, flags=re.S)


def redact_strings(value: Any) -> Any:
    """`value` (a summary, a record: dicts, lists, strings) with `redact_text` applied to every
    string in it: what a run prints or saves (commands, paths, URIs) goes through here."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_strings(v) for v in value]
    return value
