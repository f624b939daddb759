"""Batch order, on-device augmentation and the synthetic-set contract."""

from __future__ import annotations

import pytest
import torch
from fixtures import TINY_CLASSES

from dfkd.errors import UserError
from distill.augment import augment, resize_center_crop, step_generator
from distill.config import AugmentConfig
from distill.data import ArrowImages, BatchPlan, decode_all, load_synthetic, stored_size


def test_batch_plan_splits_each_global_batch_between_processes():
    plans = [BatchPlan(50, 4, world_size=3, rank=r, seed=1) for r in range(3)]
    assert plans[0].batches_per_epoch == 4
    for step in range(8):
        parts = [p.indices(step) for p in plans]
        assert all(len(x) == 4 for x in parts)
        assert len(set(torch.cat(parts).tolist())) == 12  # disjoint slices of one global batch
    epoch0 = torch.cat([plans[0].indices(s) for s in range(4)])
    assert len(set(epoch0.tolist())) == 16  # no repeats within an epoch
    assert not torch.equal(plans[0].indices(0), plans[0].indices(4))  # a new order each epoch
    assert torch.equal(BatchPlan(50, 4, 3, 0, seed=1).indices(5), plans[0].indices(5))  # a function of (seed, step)
    with pytest.raises(UserError, match="fewer than one global batch"):
        BatchPlan(10, 4, world_size=3)


def test_augment_shapes_range_and_determinism():
    images = torch.randint(0, 256, (6, 3, 40, 48), dtype=torch.uint8)
    cfg = AugmentConfig()
    a = augment(images, 32, cfg, step_generator(0, 0, 7))
    b = augment(images, 32, cfg, step_generator(0, 0, 7))
    c = augment(images, 32, cfg, step_generator(0, 1, 7))
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)  # same (seed, rank, step) -> same view; other rank differs


def test_augment_off_is_a_plain_resize():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    cfg = AugmentConfig(random_resized_crop=False, hflip=False, color_jitter=0.0)
    out = augment(images, 32, cfg, step_generator(0, 0, 0))
    assert torch.allclose(out, images.float() / 255, atol=1e-5)
    assert torch.allclose(resize_center_crop(images, 32), images.float() / 255)


def test_mixup_and_cutmix_mix_batch_partners():
    from distill.augment import mix

    x = torch.rand(8, 3, 16, 16)
    off = AugmentConfig(random_resized_crop=False, hflip=False, color_jitter=0.0)
    assert mix(x, off, step_generator(0, 0, 0)) is x  # both off: untouched
    mixup = AugmentConfig(mixup=1.0)
    a, b = mix(x, mixup, step_generator(0, 0, 3)), mix(x, mixup, step_generator(0, 0, 3))
    assert torch.equal(a, b) and not torch.allclose(a, x)  # reproducible from (seed, rank, step), and mixed
    assert a.min() >= x.min() - 1e-6 and a.max() <= x.max() + 1e-6  # convex combinations
    assert torch.allclose(a.mean(), x.mean(), atol=0.05)
    cut = mix(x, AugmentConfig(cutmix=1.0), step_generator(0, 0, 4))
    # every CutMix pixel is the image's own or copied from one partner image at the same position
    own = (cut == x).all(1)
    assert own.any() and (~own).any()
    for i in range(8):
        pasted = ~own[i]
        if pasted.any():
            partners = [j for j in range(8) if torch.equal(cut[i][:, pasted], x[j][:, pasted])]
            assert partners and partners != [i]


def test_mixing_refuses_hard_labels():
    from fixtures import REPO_ROOT

    from dfkd.config import load_config

    with pytest.raises(UserError, match="augment.mixup"):
        load_config(REPO_ROOT / "configs" / "tiny.yaml", ["distill.augment.mixup=1", "distill.loss.ce=1"])
    assert load_config(REPO_ROOT / "configs" / "tiny.yaml", ["distill.augment.cutmix=1"]).distill.augment.cutmix == 1


def test_decoded_synthetic_set(syn_dataset):
    ds = load_synthetic(syn_dataset, TINY_CLASSES)
    size = stored_size(ds)
    images, labels = decode_all(ArrowImages(ds, size))
    assert images.shape == (56, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == ds["label"] and sorted(set(labels.tolist())) == list(range(7))


def test_missing_dataset_is_user_error(tmp_path):
    with pytest.raises(UserError, match="no synthetic dataset"):
        load_synthetic(tmp_path / "nothing", TINY_CLASSES)
