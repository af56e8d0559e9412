"""Lazy package exports: a package names the module of each public name, and the module is
imported on first use (so importing the package needs neither torch nor Lightning)."""
from importlib import import_module
from typing import Any, Callable, Mapping


def lazy_exports(package: str, table: Mapping[str, str],
                 module_globals: dict) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``table`` maps each name to its
    module, relative to the package; an unknown name is the usual ``AttributeError``."""
    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f".{table[name]}", package), name)

    def __dir__() -> list:
        return sorted(set(module_globals) | set(table))

    return __getattr__, __dir__
