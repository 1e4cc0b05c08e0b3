"""Optional dependencies: what each extra installs, and one error that names it.

ctvol's core (ingest, the store, linear reslice, curation rules, evaluation
tables, export) needs neither torch nor matplotlib, so an ingest-only worker
installs none of them. ``pip install 'ctvol[all]'`` installs every extra.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError

__all__ = ["EXTRAS", "available", "require"]

#: The extra that installs each optional module.
EXTRAS = {
    "torch": "torch",            # U-nets: reslice, in-plane, classifiers, training
    "safetensors": "torch",
    "pytorch_msssim": "torch",
    "matplotlib": "figures",     # evaluation report figures, Bland-Altman plots
    "nibabel": "nifti",          # NIfTI export
    "s3fs": "s3",                # s3:// stores
}


def available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a stub in sys.modules
        return False


def require(module: str, what: str) -> ModuleType:
    """Import ``module``, or raise a :class:`MissingDependencyError` naming the extra.

    >>> require("numpy", "tests").__name__
    'numpy'
    >>> require("no_such", "this feature")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ctvol.errors.MissingDependencyError: this feature needs no_such, ...: pip install no_such
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".")[0])
        how = f"pip install 'ctvol[{extra}]'" if extra else f"pip install {module}"
        raise MissingDependencyError(
            f"{what} needs {module.split('.')[0]}, which is not installed: {how}") from exc
