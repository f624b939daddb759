"""Fixtures of the synth tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def teacher(_tiny_cache):
    """tiny:clip's teacher over the fast configs' three classes."""
    from prompts.teacher import ClipTeacher

    t = ClipTeacher.load("tiny:clip")
    t.set_classes(["dog", "guitar", "house"], "short_7")
    return t
