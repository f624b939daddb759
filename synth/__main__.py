"""``python -m synth ...`` == ``dfkd synth ...`` (so ``accelerate launch -m synth`` works)."""

from dfkd.cli import module_main

module_main("synth")
