"""The Madam optimiser, importable as ``from madam import Madam``; its code is
:mod:`deq_modules.optim`."""
from deq_modules.optim import Madam

__all__ = ["Madam"]
