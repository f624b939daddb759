"""Shared fixtures for the distill tests: a toy synthetic dataset (the synth/schema contract) and a toy
DomainBed folder, both written once per session; configs use the fast registered ``tiny_cnn`` student."""

from __future__ import annotations

import pytest
from fixtures import TINY_CLASSES, tiny_config


@pytest.fixture(scope="session")
def syn_dataset(tmp_path_factory):
    from dfkd.toydata import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "dataset", TINY_CLASSES, per_class=8, size=32)


@pytest.fixture(scope="session")
def toy_domains(tmp_path_factory):
    from dfkd.toydata import write_domainbed

    return write_domainbed(tmp_path_factory.mktemp("toy") / "toy", TINY_CLASSES, per_class=3, size=48)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test builds its own Accelerator; reset the process-wide Accelerate singletons after it."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def make_cfg(syn_dataset):
    """``make_cfg(out, *overrides)``: the tiny experiment on the toy dataset with the tiny_cnn student."""

    def make(out, *overrides):
        return tiny_config(out, f"distill.dataset={syn_dataset}", "distill.student=tiny_cnn", "distill.log_every=1",
                           *overrides)

    return make
