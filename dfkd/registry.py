"""One registry class behind every pluggable name: prompt methods, backends, parameterisations, students, losses.

    METHODS = Registry("prompt method", "prompts.method", "@register_prompt_method")

    @METHODS.register("upper")
    class Upper(PromptMethod): ...

    METHODS.get("uper")  # UserError: unknown prompt method 'uper' (prompts.method); did you mean 'upper'? valid: ...

Plugins register from a module listed under the config's ``imports``; every unknown name gets the same
one-line error: the kind, the config key, the closest names, the valid ones and how to add your own.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """`` did you mean 'a' or 'b'?`` for the closest candidates, or ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class Registry(Generic[T]):
    """``name -> object``, filled by :meth:`register`; :meth:`get` fails with one clear line."""

    def __init__(self, kind: str, key: str, decorator: str):
        self.kind, self.key, self.decorator = kind, key, decorator
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object as ``name`` (a class also gets ``cls.name = name``)."""

        def deco(obj: T) -> T:
            if isinstance(obj, type):
                obj.name = name
            self._items[name] = obj
            return obj

        return deco

    def unknown(self, name: str, extra_candidates: Iterable[str] = ()) -> UserError:
        """The error for an unknown ``name`` (``extra_candidates`` also feed the did-you-mean)."""
        hint = did_you_mean(name, [*self._items, *extra_candidates])
        return UserError(f"unknown {self.kind} '{name}' ({self.key});{hint} valid: {', '.join(self.names())}; "
                         f"add your own with {self.decorator} in a module listed under imports")

    def get(self, name: str) -> T:
        if name not in self._items:
            raise self.unknown(name)
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def pop(self, name: str) -> T:
        """Unregister ``name`` (tests register throw-away plugins)."""
        return self._items.pop(name)
