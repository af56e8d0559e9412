"""The datasets the data module serves, by name. No imports: the command-line parsers read it."""

from __future__ import annotations

DATASETS = ("emnist-mnist", "mnist", "fashion-mnist", "cifar10", "synthetic")
NUM_CLASSES = 10  # every dataset here has ten classes


def check_dataset_name(name: str) -> str:
    """``name`` if it is one of ``DATASETS``; else a ``ValueError`` listing the valid names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return name
