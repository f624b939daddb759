"""Errors a user can cause and fix.

Anything raised as :class:`UserError` is printed by the command line as one line on stderr,
with exit code 2 and no traceback (``--debug`` shows it).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (config, names, files) with a one-sentence fix."""
