"""Prompt-template ensembles for the zero-shot head (package data) and the style dictionary."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dfkd.errors import UserError

TEMPLATE_SETS = ("openai_80", "short_7")


def read_lines(packaged: str | None, path: str | None, missing: str) -> list[str]:
    """The non-blank lines, stripped, without ``#`` comment lines, of package data ``data/<packaged>.txt`` or
    else of the user's file ``path`` (template and style-word files); UserError ``missing`` if it is absent."""
    file = resources.files("prompts").joinpath(f"data/{packaged}.txt") if packaged is not None else Path(path)
    if not file.is_file():
        raise UserError(missing)
    text = file.read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def load_templates(name_or_path: str) -> list[str]:
    """``openai_80`` (the 80 OpenAI ImageNet templates), ``short_7`` (their 7-template subset), or a
    text file with one template per line; each template has one ``{}`` for the class name."""
    templates = read_lines(name_or_path if name_or_path in TEMPLATE_SETS else None, name_or_path,
                           f"template set '{name_or_path}' is neither {' nor '.join(TEMPLATE_SETS)} nor an "
                           "existing file")
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise UserError(f"template set '{name_or_path}' needs templates with exactly one {{}} each (bad: {bad[:1]})")
    return templates


#: words that start with a vowel letter but a consonant sound ("a one", "a unicorn", "a European") and words
#: that start with a silent h ("an hour")
_CONSONANT_SOUND = ("one", "once", "uni", "use", "usu", "uti", "ura", "ure", "uro", "eu", "ewe", "ufo", "ubiq")
_SILENT_H = ("hour", "honest", "honor", "honour", "heir")


def takes_an(word: str) -> bool:
    """Whether English writes "an" before ``word`` (by its first word's sound, for common nouns)."""
    w = word.strip().lower()
    if not w or not w[0].isalpha():
        return False
    if w.startswith(_SILENT_H):
        return True
    return w[0] in "aeiou" and not w.startswith(_CONSONANT_SOUND)


def with_articles(template: str, class_name: str | None = None, style_word: str | None = None) -> str:
    """``template`` with the article "a" right before ``{class_name}`` (``{style}``) made "an" when the class name
    (style word) takes one: "a {style} style image of a {class_name}" -> "an {style} style image of an
    {class_name}" for an engraving of an elephant. The slots stay; nothing else changes."""
    import re

    for slot, word in (("{class_name}", class_name), ("{style}", style_word)):
        if word is not None and takes_an(word):
            template = re.sub(r"(?<![\w'])([Aa]) (" + re.escape(slot) + ")", r"\1n \2", template)
    return template
