"""``dfkd distill`` and ``dfkd eval`` (issue #5)."""

from dfkd.errors import NotAvailableError


def main(cfg, args) -> int:
    raise NotAvailableError("`dfkd distill` is not available yet: distillation lands with issue #5")


def evaluate(cfg, args) -> int:
    raise NotAvailableError("`dfkd eval` is not available yet: evaluation lands with issue #5")
