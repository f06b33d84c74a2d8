"""docs/CONFIG.md embeds the generated reference, so it lists every field with its default."""

from __future__ import annotations

from wmtp.config.fields import iter_fields
from wmtp.config.loader import REPO_ROOT
from wmtp.config.reference import END, START, render_reference


def test_config_doc_embeds_the_current_reference():
    doc = (REPO_ROOT / "docs" / "CONFIG.md").read_text()
    assert START in doc and END in doc
    embedded = doc[doc.index(START):doc.index(END) + len(END)]
    assert embedded == render_reference(), "regenerate: python -m wmtp.config.reference"


def test_reference_lists_every_field_with_a_description():
    text = render_reference()
    for key, field in iter_fields():
        assert f"`{key}`" in text
        assert field.description, f"{key} has no description"
