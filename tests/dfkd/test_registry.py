"""The one Registry behind prompt methods, backends, parameterisations, students and losses."""

from __future__ import annotations

import pytest

from dfkd.errors import UserError
from dfkd.registry import Registry


def test_register_get_names_and_the_one_line_error():
    reg: Registry = Registry("widget", "stage.widget", "@register_widget")

    @reg.register("round")
    class Round:
        pass

    @reg.register("square")
    def square():
        return "sq"

    assert reg.get("round") is Round and Round.name == "round"  # a class learns its registered name
    assert reg["square"]() == "sq" and "square" in reg and "oval" not in reg
    assert reg.names() == ["round", "square"] and list(reg) == ["round", "square"] and len(reg) == 2
    with pytest.raises(UserError) as e:
        reg.get("rund")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == ("unknown widget 'rund' (stage.widget); did you mean 'round'? valid: round, square; "
                   "add your own with @register_widget in a module listed under imports")
    with pytest.raises(UserError, match=r"unknown widget 'zzz' \(stage\.widget\); valid: round, square;"):
        reg["zzz"]
    reg.pop("round")
    assert reg.names() == ["square"]


@pytest.mark.parametrize(("registry", "kind", "key"), [
    ("prompts.methods:PROMPT_METHODS", "prompt method", "prompts.method"),
    ("synth.backends:_BACKENDS", "backend", "synth.backend"),
    ("synth.backends.clip_guided:_PARAMETERIZATIONS", "parameterization", "synth.clip_guided.parameterization"),
    ("distill.students:STUDENTS", "student", "distill.student"),
    ("distill.losses:LOSSES", "loss", "distill.loss.extra"),
])
def test_every_pluggable_name_uses_the_one_registry(registry, kind, key):
    import importlib

    import synth.backends.clip_guided  # noqa: F401 - registers the built-in backends and parameterisations

    module, attr = registry.split(":")
    reg = getattr(importlib.import_module(module), attr)
    assert isinstance(reg, Registry) and reg.kind == kind and reg.key == key and len(reg) >= 1
    with pytest.raises(UserError, match=f"unknown {kind} 'no_such_thing'"):
        reg.get("no_such_thing")
