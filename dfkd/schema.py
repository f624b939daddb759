"""The dataset contract between ``synth`` (writes it) and ``distill`` (reads it).

Layout (the Hub's own, so the folder loads locally and uploads unchanged)::

    OUTPUT_DIR/dataset/README.md            dataset card with YAML front matter
    OUTPUT_DIR/dataset/data/*.parquet       shards

``datasets.load_dataset(str(OUTPUT_DIR / "dataset"), split="train")`` returns rows with
:func:`features`. Each row is keyed by ``(label, index)``: ``index`` counts the images of one class
from 0 to ``images_per_class - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

from dfkd.errors import UserError

DATASET_DIR = "dataset"  #: the dataset's folder inside OUTPUT_DIR
DATA_DIR = "data"
CARD_NAME = "README.md"
SYNTH_STATE = ".dfkd_synth.json"  #: the config fingerprint the shards were made with (hidden: not uploaded)

#: column -> meaning (also rendered into the dataset card)
COLUMNS = {
    "image": "the synthetic image (JPEG or PNG bytes at synth.store_resolution)",
    "label": "class index (ClassLabel with the class names)",
    "index": "index of the image within its class; (label, index) is unique",
    "class_name": "the class name the prompt used",
    "prompt": "human-readable prompt; a style vector is written as a marker such as <style:mix>",
    "method": "prompt method (plain, handcrafted, mix, random, contrastive, ...)",
    "style": "JSON: style words and weights, learned style id, or vector seed",
    "seed": "the generator seed of this image (regenerates it alone)",
    "generator": "backend and model id, e.g. diffusion:stabilityai/sd-turbo",
    "teacher_confidence": "the teacher's zero-shot probability of the intended class",
}


def features(classes: Sequence[str]):
    """The ``datasets.Features`` of a synthetic dataset for ``classes``."""
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(classes)),
            "index": datasets.Value("int32"),
            "class_name": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "method": datasets.Value("string"),
            "style": datasets.Value("string"),
            "seed": datasets.Value("int64"),
            "generator": datasets.Value("string"),
            "teacher_confidence": datasets.Value("float32"),
        }
    )


def check_classes(dataset_classes: Sequence[str], config_classes: Sequence[str], where: str) -> None:
    """Refuse a dataset whose class names (or their order) differ from the config's."""
    if list(dataset_classes) != list(config_classes):
        missing = [c for c in config_classes if c not in dataset_classes]
        extra = [c for c in dataset_classes if c not in config_classes]
        detail = (f"missing {missing[:3]}" if missing else "") + (f" extra {extra[:3]}" if extra else "")
        detail = detail.strip() or "same names in a different order"
        raise UserError(
            f"dataset '{where}' has classes that differ from the config ({detail}); "
            "synthesise it again with this config or fix `classes`"
        )


def check_columns(column_names: Sequence[str], where: str) -> None:
    missing = [c for c in COLUMNS if c not in column_names]
    if missing:
        raise UserError(f"dataset '{where}' lacks column(s) {', '.join(missing)}; it was not written by `dfkd synth`")
