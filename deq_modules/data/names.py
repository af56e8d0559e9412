"""The datasets the data module serves, by name. No imports: the command-line parsers read it."""

from __future__ import annotations

DATASETS = ("emnist-mnist", "mnist", "fashion-mnist", "cifar10", "synthetic")
NUM_CLASSES = 10  # every dataset here has ten classes
# Images per split as each dataset is published: what the command lines check a batch limit
# against before any file is read (the synthetic set's sizes are its own options).
SPLIT_IMAGES = {"emnist-mnist": {"train": 60000, "test": 10000},
                "mnist": {"train": 60000, "test": 10000},
                "fashion-mnist": {"train": 60000, "test": 10000},
                "cifar10": {"train": 50000, "test": 10000}}


def check_dataset_name(name: str) -> str:
    """``name`` if it is one of ``DATASETS``; else a ``ValueError`` listing the valid names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return name
