"""A generated, learnable, MNIST-shaped data set for tests and offline smoke runs."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .names import NUM_CLASSES


def make_synthetic(n_train: int = 2000, n_test: int = 500, input_size: int = 784,
                   noise: float = 0.5, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A learnable, MNIST-shaped stand-in: sparse random class prototypes plus Gaussian noise.

    Each prototype inks ~25% of the pixels (like a digit's strokes). The noise makes single
    pixels ambiguous between classes, yet whole images stay near their own prototype, so
    nearest-prototype accuracy is ~100%. Returns {"train"/"test": (uint8 images (N, D), labels (N,))}.
    """
    g = torch.Generator().manual_seed(seed)
    ink = torch.rand(NUM_CLASSES, input_size, generator=g) < 0.25
    prototypes = ink * (0.5 + 0.5 * torch.rand(NUM_CLASSES, input_size, generator=g))

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % NUM_CLASSES  # balanced classes, then shuffled
        labels = labels[torch.randperm(n, generator=g)]
        x = prototypes[labels] + noise * torch.randn(n, input_size, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels

    return {"train": sample(n_train), "test": sample(n_test)}


# The keyword arguments of make_synthetic and their defaults (read from its signature: one source)
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    name: p.default for name, p in inspect.signature(make_synthetic).parameters.items()}


def synthetic_options(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``SYNTHETIC_DEFAULTS`` updated with ``overrides``; an unknown key is a ``ValueError``."""
    unknown = set(overrides or {}) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown synthetic_kwargs {sorted(unknown)}; valid: {', '.join(SYNTHETIC_DEFAULTS)}")
    return {**SYNTHETIC_DEFAULTS, **(overrides or {})}
