"""Prompt-template ensembles for the zero-shot head (package data) and the style dictionary."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dfkd.errors import UserError

TEMPLATE_SETS = ("openai_80", "short_7")


def read_lines(text: str) -> list[str]:
    """The non-blank lines of ``text``, stripped, without ``#`` comment lines (template and style-word files)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def load_templates(name_or_path: str) -> list[str]:
    """``openai_80`` (the 80 OpenAI ImageNet templates), ``short_7`` (their 7-template subset), or a
    text file with one template per line; each template has one ``{}`` for the class name."""
    if name_or_path in TEMPLATE_SETS:
        templates = read_lines(resources.files("prompts").joinpath(f"data/{name_or_path}.txt").read_text("utf-8"))
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(f"template set '{name_or_path}' is neither {' nor '.join(TEMPLATE_SETS)} nor an existing file")
        templates = read_lines(path.read_text("utf-8"))
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise UserError(f"template set '{name_or_path}' needs templates with exactly one {{}} each (bad: {bad[:1]})")
    return templates
