"""The architecture as a rule on the import graph (read with ast, function-level imports included).

Layers, bottom up: the floor (``dfkd.errors``, ``runtime``, ``configtools``, ``registry``, ``models``,
``modelcache``, ``tiny``, ``digits``, ``schema``: the dataset contract, ``stage``: the stage contract) <
``prompts`` < ``synth`` and ``distill`` < the roof (the rest of ``dfkd``: the command line, ``dfkd run``, the
experiment config, the toy-data writer; and each stage's ``__main__``, which only hands ``python -m STAGE`` to the
command line). A module may import its own package and the layers below it; ``synth`` and ``distill`` never
import each other (they meet through the dataset on disk). Stages read the experiment through the Protocol their
own ``config`` module declares, never through the roof's ``ExperimentConfig``.

``KNOWN`` would list upward imports tolerated for now; it is empty, and may only stay so.
"""

from __future__ import annotations

import ast

from fixtures import REPO_ROOT

FLOOR = {"errors", "runtime", "configtools", "registry", "models", "modelcache", "tiny", "digits", "schema", "stage"}
STAGES = {"prompts": 1, "synth": 2, "distill": 2}

KNOWN: set[tuple[str, str]] = set()


def layer(module: str) -> tuple[str, int] | None:
    top, _, rest = module.partition(".")
    if module.endswith(".__main__"):  # `python -m synth` / `accelerate launch -m synth`: the command line's door
        return ("roof", 3)
    if top == "dfkd":
        return ("floor", 0) if rest.split(".")[0] in FLOOR else ("roof", 3)
    return (top, STAGES[top]) if top in STAGES else None


def imports(path, module: str, is_package: bool):
    """Every module ``path`` imports (absolute names), wherever the import statement is."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or target in ("dfkd", *STAGES):  # `from . import x`: the submodules are the targets
                yield from (f"{target}.{a.name}" for a in node.names)
            else:
                yield target


def upward_imports() -> set[tuple[str, str]]:
    found = set()
    for package in ("dfkd", *STAGES):
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_package else parts)
            here = layer(module)
            for target in imports(path, module, is_package):
                there = layer(target)
                if there is None or there[0] == here[0]:
                    continue
                if there[1] >= here[1]:
                    found.add((module, target))
    return found


def test_no_module_imports_upward():
    found = upward_imports()
    new = sorted(found - KNOWN)
    assert not new, f"imports that point up the layers (floor < prompts < synth, distill < roof): {new}"
    gone = sorted(KNOWN - found)
    assert not gone, f"these upward imports are gone: remove them from KNOWN in {__file__}: {gone}"


def test_the_rule_sees_an_upward_import(tmp_path):
    """The checker itself: a floor module importing a stage, and synth importing distill, are both caught."""
    (tmp_path / "m.py").write_text("def f():\n    from distill.trainer import train\n    import prompts.cli\n")
    assert layer("dfkd.registry")[1] < layer("prompts.cli")[1]
    targets = list(imports(tmp_path / "m.py", "dfkd.registry", False))
    assert targets == ["distill.trainer", "prompts.cli"]
    (tmp_path / "s.py").write_text("from ..distill import data\n")
    assert list(imports(tmp_path / "s.py", "synth.backends.x", False)) == ["synth.distill"]  # level 2 from a subpackage
    assert layer("synth.run")[1] == layer("distill.data")[1]  # same level: only the explicit synth/distill rule applies
