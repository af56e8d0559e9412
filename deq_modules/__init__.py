"""Hopfield networks (CHN, HAM) as DEQs: models, LightningModules, data and the experiments."""
from .activations import rho, rho_integral, rho_prime
from .data import DATASETS, DatasetNotFoundError, HopfieldDataModule
from .experiments import EXPERIMENTS, ROWS, Experiment, get_experiment, select
from .functions import EvenOddFunction, OneMatrixFunction
from .lit import LitEvenOddDEQ, LitHopfieldDEQ, LitOneMatrixDEQ, lit_module_for

__all__ = [
    "DATASETS", "DatasetNotFoundError", "EXPERIMENTS", "EvenOddFunction", "Experiment",
    "HopfieldDataModule", "LitEvenOddDEQ", "LitHopfieldDEQ", "LitOneMatrixDEQ",
    "OneMatrixFunction", "ROWS", "get_experiment", "lit_module_for", "rho", "rho_integral",
    "rho_prime", "select",
]
