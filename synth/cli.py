"""``dfkd synth`` and ``dfkd push-dataset`` (issue #4)."""

from dfkd.errors import NotAvailableError


def main(cfg, args) -> int:
    raise NotAvailableError("`dfkd synth` is not available yet: image synthesis lands with issue #4")


def push_dataset(args) -> int:
    raise NotAvailableError("`dfkd push-dataset` is not available yet: Hub publishing lands with issue #4")
