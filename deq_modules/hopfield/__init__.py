"""The Hopfield networks of the papers as maps ``f(Ux, z)`` for the DEQ engine, and the
registry of their update structures.

A *structure* is how one iteration updates the layers (``onematrix``: every layer at once;
``evenodd``: the odd layers, then the even ones); a *model* is what a layer's state is (CHN
or HAM, ``models.py``). Any structure runs either model.

    base.py        LayeredHopfield: layers, parameters, drives and energy every structure shares
    models.py      CHN and HAM as small objects (activation, update, local equilibrium, energy)
    onematrix.py   the synchronous map (Eq. 5, 6)
    evenodd.py     the even-odd map (Eq. 7-10)
    activations.py rho, its derivative and antiderivative

A new structure is one file and one registry line: a subclass of
:class:`~deq_modules.hopfield.base.LayeredHopfield` (``forward``, ``readout``,
``layer_states``, ``from_layer_states`` and ``state_size``), and a :class:`Structure` passed
to :func:`register_structure` (below for this package's, or from anywhere). Rows of
``deq_modules.experiments`` then name it in ``structure``; the LightningModule, the FLOP
count of ``bench.flops`` and the figures ask the registry, never the name.

Importing this package is cheap: the registry holds what the figure scripts read (they import
neither torch nor Lightning), and a structure's map is imported when it is first built.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Sequence

from ..lazy import lazy_exports

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Structure:
    """One update structure: its map and what the rest of the project needs to know of it.

    Args:
        name: the registry key, written in ``Experiment.structure`` and run configurations
            (lower case letters, digits and ``_``).
        function: the map class, or ``"module:Class"`` to import it on first use.
        label: a short name for legends (``"plain"``, ``"even-odd"``).
        updates: the kind of update, for the claims (``paper_figures.claims`` compares rows of
            ``"synchronous"`` and ``"even-odd"`` structures; any other kind takes no part).
        colour: its colour in the figures (a Matplotlib colour).
        first_step_saving: the fraction of the map's matrix products that read only
            ``rho(z*)`` in its first step, whose input gradients the backward from the
            detached fixed point does not need (``bench.flops``; 0 when unsure).
    """

    name: str
    function: type | str
    label: str
    updates: str
    colour: str
    first_step_saving: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"structure name {self.name!r} must be lower case letters, digits "
                             "and '_', starting with a letter, e.g. 'evenodd'")
        if isinstance(self.function, str) and self.function.count(":") != 1:
            raise ValueError(f"structure {self.name!r}: function {self.function!r} must be a "
                             "class or 'module:Class'")
        if not 0.0 <= self.first_step_saving <= 1.0:
            raise ValueError(f"structure {self.name!r}: first_step_saving must be in [0, 1], "
                             f"got {self.first_step_saving!r}")

    @property
    def function_class(self) -> type:
        """The map class (imported on first use when given as ``"module:Class"``)."""
        if isinstance(self.function, str):
            module, name = self.function.split(":")
            return getattr(import_module(module), name)
        return self.function

    def build(self, layers: Sequence[int], model: Any, **options: Any):
        """The map for ``layers`` and ``model`` (``"chn"``, ``"ham"`` or a model object).

        ``options`` are the structure settings of a run (``inner_iter``, ``inner_damping``):
        the map receives those its constructor names, and the others are not its own.
        """
        cls = self.function_class
        params = inspect.signature(cls).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            options = {k: v for k, v in options.items() if k in params}
        return cls(list(layers), model=model, **options)


STRUCTURES: dict[str, Structure] = {}


def register_structure(structure: Structure) -> Structure:
    """Add ``structure`` to :data:`STRUCTURES` under its name (a name already taken is a
    ``ValueError``); returns it."""
    if not isinstance(structure, Structure):
        raise TypeError(f"register_structure takes a Structure, got {type(structure).__name__}")
    if structure.name in STRUCTURES:
        raise ValueError(f"structure {structure.name!r} is already registered; registered: "
                         f"{list(STRUCTURES)}")
    STRUCTURES[structure.name] = structure
    return structure


def get_structure(name: str) -> Structure:
    """The registered structure ``name``; a ``ValueError`` lists the registered ones."""
    try:
        return STRUCTURES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown structure {name!r}; valid: {list(STRUCTURES)}") from None


# The papers' structures, one line each.
register_structure(Structure("onematrix", "deq_modules.hopfield.onematrix:OneMatrixFunction",
                             label="plain", updates="synchronous", colour="tab:blue",
                             first_step_saving=1.0))
register_structure(Structure("evenodd", "deq_modules.hopfield.evenodd:EvenOddFunction",
                             label="even-odd", updates="even-odd", colour="tab:orange",
                             first_step_saving=0.5))

_LAZY = {
    "LayeredHopfield": "base", "OneMatrixFunction": "onematrix", "EvenOddFunction": "evenodd",
    "CHN": "models", "HAM": "models", "HopfieldModel": "models", "MODELS": "models",
    "get_model": "models",
    "rho": "activations", "rho_prime": "activations", "rho_integral": "activations",
}
__all__ = sorted(["STRUCTURES", "Structure", "get_structure", "register_structure", *_LAZY])

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
