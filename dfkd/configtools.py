"""Strict, typed configuration: YAML (``safe_load`` only) + dotted overrides -> dataclasses.

Every section of an experiment file is a dataclass owned by the package that uses it. The loader
here is generic: unknown keys, wrong types and impossible values are :class:`UserError` s that name
the dotted key and, where there is a closed set, the valid choices. Sections stay plain dataclasses
(walked here: unknown and required keys, each section's ``validate``); the values in them are checked by
pydantic in strict mode, so the typed conversion is a library's, and only the one-line wording is ours.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import UserError

_MISSING = dataclasses.MISSING


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (data only, never code) with YAML 1.2 booleans: only ``true``/``false`` are booleans, so
    ``no``, ``off``, ``yes`` and ``on`` stay strings where a key expects one (``distill.mixed_precision=no``)."""


_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_SafeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_SafeLoader)  # a SafeLoader subclass: plain data only


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with a ``yaml.SafeLoader`` (configs are data, never code)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist; pass an existing YAML file with --config")
    try:
        data = _safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file '{path}' is not valid YAML{where}; fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of sections (classes, prompts, synth, ...)")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"synth.images_per_class=4"`` -> (``["synth", "images_per_class"]``, ``4``).

    The value is parsed as YAML so that numbers, booleans, ``null`` and ``[a, b]`` lists work.
    """
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key.sub=value (e.g. synth.images_per_class=4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}' has an empty key; write it as key.sub=value")
    try:
        value = _safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted override into a (copied) nested mapping; intermediate mappings are created."""
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                dotted = ".".join(parts[: i + 1])
                raise UserError(f"override '{text}': '{dotted}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


@functools.cache
def _adapter(tp: Any):
    from pydantic import TypeAdapter

    return TypeAdapter(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` as a ``tp`` field: a nested section is built by :func:`from_dict`; every other type is checked by
    pydantic in strict mode (no "4" -> 4 or "yes" -> True; an integer is a valid float)."""
    from pydantic import ValidationError

    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if get_origin(tp) is Literal and value not in get_args(tp):
        valid = ", ".join(str(c) for c in get_args(tp))
        raise UserError(f"config key '{key}' must be one of: {valid} (got {value!r})")
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, dict):  # YAML keys may be numbers; field keys are names
        value = {str(k): v for k, v in value.items()}
    try:
        return _adapter(tp).validate_python(value, strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        if get_origin(tp) in (list, dict) and error["loc"]:  # one bad item: name it
            item = error["loc"][0]
            key, tp, value = f"{key}[{item}]" if get_origin(tp) is list else f"{key}.{item}", get_args(tp)[-1], error["input"]
        raise UserError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}") from None


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; reject unknown keys and wrong types by dotted name.

    After construction, ``obj.validate(prefix)`` is called when the class defines it, so each
    section checks its own impossible values (``images_per_class=0``, ...).
    """
    if not isinstance(data, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1, cutoff=0.6)
        if close:
            raise UserError(f"unknown config key '{key}'; did you mean '{prefix}{close[0]}'?")
        valid = ", ".join(sorted(fields))
        raise UserError(f"unknown config key '{key}'; valid keys here are: {valid}")
    kwargs = {}
    for name, field in fields.items():
        key = f"{prefix}{name}"
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif field.default is _MISSING and field.default_factory is _MISSING:  # type: ignore[misc]
            raise UserError(f"config key '{key}' is required; add it to the config file or pass {key}=...")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict/list/scalars (for YAML/JSON)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def check(condition: bool, key: str, message: str) -> None:
    """Raise a :class:`UserError` about ``key`` unless ``condition`` holds."""
    if not condition:
        raise UserError(f"config key '{key}' {message}")


def at_least(section: Any, prefix: str, **minimums: float) -> None:
    """:func:`check` that each named field of ``section`` is at least its minimum (``None``, unset, passes)."""
    for name, low in minimums.items():
        value = getattr(section, name)
        check(value is None or value >= low, prefix + name, f"must be >= {low}" if low == 0 else f"must be at least {low}")


__all__ = ["apply_overrides", "at_least", "check", "from_dict", "load_yaml", "parse_override", "to_dict"]


RESOLVED_CONFIG_NAME = "config.yaml"


def to_yaml(obj: Any) -> str:
    """A config dataclass as YAML (the same text ``dfkd config`` prints and every run writes)."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)


def write_resolved_config(cfg: Any, name: str = RESOLVED_CONFIG_NAME) -> Path | None:
    """Write the fully resolved config into ``cfg.out`` (main process only)."""
    from .runtime import atomic_write, is_main_process

    if not is_main_process():
        return None
    cfg.out.mkdir(parents=True, exist_ok=True)
    return atomic_write(cfg.out / name, to_yaml(cfg))
