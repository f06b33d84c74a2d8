"""The configuration reference, generated from the schema's field descriptions.

`python -m wmtp.config.reference` prints the Markdown tables that docs/CONFIG.md embeds between
`<!-- reference:start -->` and `<!-- reference:end -->`; a test keeps the two equal, so the doc
lists every field with its current default.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from wmtp.config.fields import section_of
from wmtp.config.schema import WMTPConfig

START, END = "<!-- reference:start -->", "<!-- reference:end -->"


def _type_text(annotation: Any) -> str:
    text = repr(annotation) if get_origin(annotation) or get_args(annotation) else getattr(annotation, "__name__", repr(annotation))
    return text.replace("typing.", "").replace("NoneType", "None")


def _default_text(field: FieldInfo) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = cast(Callable[[], Any], field.default_factory)()  # the schema's factories take no data
    else:
        return "required"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, default=list)


def _bounds(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            v = getattr(meta, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    return ", ".join(parts)


def render_reference() -> str:
    """Markdown: one table per section (`key | type | default | allowed | description`)."""
    out = [START, ""]

    def section(cls: type[BaseModel], prefix: str, title: str, description: str) -> None:
        leaves = [(n, f) for n, f in cls.model_fields.items() if section_of(f.annotation) is None]
        if leaves:
            out.append(f"### `{title}`" + (f": {description}" if description else ""))
            out.append("")
            out.append("| key | type | default | bounds | description |")
            out.append("|---|---|---|---|---|")
            for name, field in leaves:
                cells = [f"`{prefix}{name}`", f"`{_type_text(field.annotation)}`", f"`{_default_text(field)}`",
                         _bounds(field), field.description or ""]
                cells = [c.replace("|", "\\|") for c in cells]  # a bare | would split the table cell
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        for name, field in cls.model_fields.items():
            if (sub := section_of(field.annotation)) is not None:
                section(sub, f"{prefix}{name}.", f"{prefix}{name}", field.description or "")

    section(WMTPConfig, "", "(top level)", "")
    out.append(END)
    return "\n".join(out)


if __name__ == "__main__":
    print(render_reference())
