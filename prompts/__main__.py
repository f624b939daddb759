"""``python -m prompts learn|show ...`` == ``dfkd prompts learn|show ...``."""

from dfkd.cli import module_main

module_main("prompts")
