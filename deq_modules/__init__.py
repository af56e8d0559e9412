"""Hopfield networks (CHN, HAM) as DEQs: the maps and their registry of structures
(``hopfield/``), LightningModules, data (``data/``) and the experiments.

Importing the package is cheap: ``deq_modules.experiments`` (the registry of Table 2) needs
neither torch nor Lightning, so tools that only read results (``paper_figures``) stay light.
The names below load their module on first use.
"""
from .lazy import lazy_exports

_LAZY = {
    "rho": "hopfield.activations", "rho_prime": "hopfield.activations",
    "rho_integral": "hopfield.activations",
    "DATASETS": "data", "DatasetNotFoundError": "data", "HopfieldDataModule": "data",
    "EXPERIMENTS": "experiments", "ROWS": "experiments", "Experiment": "experiments",
    "get_experiment": "experiments", "select": "experiments", "register_table": "experiments",
    "STRUCTURES": "hopfield", "Structure": "hopfield", "get_structure": "hopfield",
    "register_structure": "hopfield", "CHN": "hopfield.models", "HAM": "hopfield.models",
    "OneMatrixFunction": "hopfield.onematrix", "EvenOddFunction": "hopfield.evenodd",
    "LitHopfieldDEQ": "lit", "LitOneMatrixDEQ": "lit", "LitEvenOddDEQ": "lit",
    "lit_module_for": "lit",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
