"""``dfkd run``: every stage in order (prompts -> synth -> distill -> eval), each resuming."""

from __future__ import annotations

from .errors import NotAvailableError


def run(cfg, args) -> int:
    raise NotAvailableError("`dfkd run` is not available yet: the stages it chains land with issues #3-#5")
