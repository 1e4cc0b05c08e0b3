"""ctvol: CT DICOM cohorts to uniform, analysis-ready Zarr volumes.

The data model: a volume is an :class:`xarray.Dataset` with ``hu`` (int16,
Hounsfield units) on dims ``("z", "y", "x")``, coordinates in mm in the
patient frame (z along the slice normal), geometry in attrs
(``docs/storage.md``).

Heavy dependencies (pydicom, zarr, xarray, dask, torch) are imported by the
functions that need them, so ``import ctvol`` stays fast. Verbs live in
private modules named after them (``_ingest.py``), as in dask-image and
scikit-image, so no submodule can shadow a function of the same name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "IngestReport",
    "__version__",
    "catalog",
    "classify_slices",
    "curate",
    "curate_store",
    "downsample_inplane",
    "evaluate",
    "export",
    "ingest",
    "list_series",
    "open_cohort",
    "open_series",
    "load_inplane_model",
    "load_model",
    "localize",
    "match_slices",
    "morphometry",
    "partition_of",
    "reslice",
    "run",
    "self_check",
    "shift_interleave",
    "to_dicom",
    "to_nifti",
    "train",
    "train_classifier",
    "train_inplane",
    "train_localizer",
    "upsample_inplane",
    "VolumeDataset",
    "write",
    "write_many",
]

_LAZY = {
    "IngestReport": "ctvol._ingest",
    "ingest": "ctvol._ingest",
    "evaluate": "ctvol.evaluation",
    "export": "ctvol._export",
    "to_nifti": "ctvol.io.nifti",
    "to_dicom": "ctvol.io.dicom_write",
    "VolumeDataset": "ctvol.training.dataset",
    "reslice": "ctvol._reslice",
    "self_check": "ctvol._reslice",
    "shift_interleave": "ctvol._shift_interleave",
    "load_model": "ctvol.models",
    "upsample_inplane": "ctvol._inplane",
    "downsample_inplane": "ctvol._inplane",
    "load_inplane_model": "ctvol.models",
    "train_inplane": "ctvol.training.inplane",
    "train": "ctvol.training.loop",
    "catalog": "ctvol.io.store",
    "list_series": "ctvol.io.store",
    "open_cohort": "ctvol.io.store",
    "open_series": "ctvol.io.store",
    "write": "ctvol.io.store",
    "write_many": "ctvol.io.store",
    "classify_slices": "ctvol.curation",
    "curate": "ctvol.curation",
    "curate_store": "ctvol.curation",
    "run": "ctvol._run",
    "localize": "ctvol.curation",
    "match_slices": "ctvol.curation",
    "partition_of": "ctvol.curation",
    "train_classifier": "ctvol.curation",
    "train_localizer": "ctvol.curation",
}

_SUBMODULES = ("morphometry",)

if TYPE_CHECKING:
    from . import morphometry
    from ._export import export
    from ._ingest import IngestReport, ingest
    from ._inplane import downsample_inplane, upsample_inplane
    from ._reslice import reslice, self_check
    from ._run import run
    from ._shift_interleave import shift_interleave
    from .curation import (
        classify_slices,
        curate,
        curate_store,
        localize,
        match_slices,
        partition_of,
        train_classifier,
        train_localizer,
    )
    from .evaluation import evaluate
    from .io.dicom_write import to_dicom
    from .io.nifti import to_nifti
    from .io.store import catalog, list_series, open_cohort, open_series, write, write_many
    from .models import load_inplane_model, load_model
    from .training.dataset import VolumeDataset
    from .training.inplane import train_inplane
    from .training.loop import train


def __getattr__(name: str) -> Any:
    # PEP 562: resolve public verbs on first use, keeping `import ctvol` cheap.
    if name in _SUBMODULES:  # public submodules: `ctvol.morphometry.bland_altman(...)`
        import importlib

        module = importlib.import_module(f"ctvol.{name}")
        globals()[name] = module
        return module
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ctvol' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
