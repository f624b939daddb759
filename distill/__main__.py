"""``python -m distill ...`` == ``dfkd distill ...`` (so ``accelerate launch -m distill`` works)."""

from dfkd.cli import module_main

module_main("distill")
