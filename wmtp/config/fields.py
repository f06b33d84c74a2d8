"""The one walker of a pydantic schema (`WMTPConfig`, a Tune space, a study spec): which section
an annotation holds, the section or field at a key path, and every leaf field by dotted key. The
loader's error messages and the generated reference (docs/CONFIG.md) both read the schema here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from wmtp.config.schema import WMTPConfig


def section_of(annotation: Any) -> type[BaseModel] | None:
    """The section (pydantic model) an annotation holds: `X`, or the model inside `X | None` or a
    union; None for a leaf."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def section_at(loc: Sequence[Any], root: type[BaseModel] = WMTPConfig) -> type[BaseModel] | None:
    """The section reached by walking field names `loc` from `root` (None: no such section)."""
    cls: type[BaseModel] | None = root
    for part in loc:
        if cls is None or part not in cls.model_fields:
            return None
        cls = section_of(cls.model_fields[part].annotation)
    return cls


def field_at(loc: Sequence[Any], root: type[BaseModel] = WMTPConfig) -> FieldInfo | None:
    """The field at key path `loc` under `root` (None: no such field)."""
    if not loc:
        return None
    parent = section_at(loc[:-1], root)
    if parent is None or loc[-1] not in parent.model_fields:
        return None
    return parent.model_fields[loc[-1]]


def iter_fields(cls: type[BaseModel] = WMTPConfig, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Yield `(dotted_key, field)` for every leaf field, depth first in schema order."""
    for name, field in cls.model_fields.items():
        section = section_of(field.annotation)
        if section is not None:
            yield from iter_fields(section, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


__all__ = ["field_at", "iter_fields", "section_at", "section_of"]
