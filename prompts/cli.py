"""``dfkd prompts learn|show`` (issue #3)."""

from dfkd.errors import NotAvailableError


def learn(cfg, args) -> int:
    raise NotAvailableError("`dfkd prompts learn` is not available yet: Contrastive-Prompt learning lands with issue #3")


def show(cfg, args) -> int:
    raise NotAvailableError("`dfkd prompts show` is not available yet: prompt diagnostics land with issue #3")
