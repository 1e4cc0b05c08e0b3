"""``classify_slices``: a class for every slice, mapped over z-blocks as a Dask graph.

Each task gets one z-block of ``hu`` (whole slices) and returns a small
(n, outputs) float32 array; models are loaded once per worker process, as for
:func:`ctvol.reslice`. Nothing is computed until the caller asks.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

from .._compute import cluster_has_gpu
from .._volume import axis_spacing, check_volume
from ..errors import OptionError
from ..models import SLICE_FORMAT
from ..models._runtime import cached_model, graph_model, resolve_device
from ..models._slice import resolve
from . import _blank

if TYPE_CHECKING:
    import dask.array as da
    import xarray as xr

__all__ = ["BLANK_CLASSES", "PAPER_CLASSES", "classify_slices", "slice_map"]

#: The slice classes of the paper's classifier.
PAPER_CLASSES = ("blank", "head", "orbital", "maxilla", "mandible", "neck")
#: Classes of the default, rule-based classifier.
BLANK_CLASSES = ("blank", "body")


def pixel_mm(ds: xr.Dataset) -> tuple[float, float]:
    """(dy, dx) in mm: from the y/x coordinates, else attrs["spacing"], else 1 mm."""
    out = [abs(axis_spacing(ds, c)) for c in ("y", "x")]
    return tuple(float(s) if np.isfinite(s) else 1.0 for s in out)  # type: ignore[return-value]


def _rule_block(block: np.ndarray, *, pixel: tuple[float, float], params: dict[str, float],
                min_fraction: float) -> np.ndarray:
    frac = _blank.body_fraction(block, pixel, **params)
    body = frac >= min_fraction
    # Columns: P(blank), P(body), body fraction.
    return np.stack([~body, body, frac], axis=1).astype(np.float32)


def model_block(block: np.ndarray, model: Any, *, device: str, batch_size: int) -> np.ndarray:
    # once per worker process and device
    return cached_model(model, device, SLICE_FORMAT).predict(
        block, batch_size=batch_size)


def slice_map(ds: xr.Dataset, func: Any, outputs: int, *, model: Any = None,
              gpu: bool = False, token: str, **kwargs: Any) -> da.Array:
    """``func(block, [model,] **kwargs)`` over z-blocks of ``ds.hu`` -> (z, outputs) dask array.

    ``model`` (a path, or an in-memory model shipped as one graph key) is
    passed to every task; ``gpu`` annotates the tasks with a GPU resource.
    """
    import dask
    import dask.array as da

    hu = ds["hu"].data
    if not isinstance(hu, da.Array):
        hu = da.from_array(np.asarray(hu), chunks=(32, -1, -1))
    hu = hu.rechunk({1: -1, 2: -1})
    args: list[Any] = [hu, "zyx"]
    if model is not None:
        # Checkpoints travel as their path (loaded once per worker process); an
        # in-memory model as one shared graph key.
        args += [model if isinstance(model, str) else graph_model(model, "slice"), None]
    with dask.annotate(resources={"GPU": 1}) if gpu else contextlib.nullcontext():
        return da.blockwise(
            func, "zc", *args, new_axes={"c": outputs}, concatenate=True,
            dtype=np.float32, meta=np.empty((0, 0), dtype=np.float32), token=token, **kwargs,
        )


def _labels_array(ds: xr.Dataset, probs: da.Array, classes: list[str], method: str,
                  extra: dict[str, Any] | None = None) -> xr.DataArray:
    import xarray as xr

    codes = probs.argmax(axis=1).astype(np.int8)
    # A DataArray's coordinates must live on its own dims: one (z) coordinate
    # of probabilities per class, ``p_<class>``, all slices of one graph.
    coords: dict[str, Any] = {"z": ds["z"]}
    coords.update({f"p_{c}": ("z", probs[:, i]) for i, c in enumerate(classes)})
    coords.update(extra or {})
    attrs = {"classes": list(classes), "flag_values": list(range(len(classes))),
             "flag_meanings": " ".join(classes), "method": method,
             "long_name": "slice class"}
    if "series_uid" in ds.attrs:
        attrs["series_uid"] = ds.attrs["series_uid"]
    return xr.DataArray(codes, dims=("z",), coords=coords, name="label", attrs=attrs)


def classify_slices(
    ds: xr.Dataset,
    model: Any = None,
    *,
    batch_size: int = 64,
    device: str | None = None,
    tissue_hu: float = _blank.TISSUE_HU,
    min_fraction: float = _blank.MIN_FRACTION,
    min_thickness_mm: float = _blank.MIN_THICKNESS_MM,
) -> xr.DataArray:
    """Classify every slice of a volume (lazy, one Dask task per z-block).

    Parameters
    ----------
    ds : xarray.Dataset
        A volume (``docs/storage.md``): ``hu`` (z, y, x) in HU.
    model : SliceModel or path, optional
        A trained slice classifier (:func:`ctvol.curation.train_classifier`).
        Default: the rule-based blank detector (``docs/curation.md``), classes
        ``["blank", "body"]``, which needs no weights.
    batch_size : int, default 64
        Slices per forward pass (model only).
    device : str, optional
        ``"cuda"`` / ``"cpu"``; default CUDA when available (model only).
    tissue_hu, min_fraction, min_thickness_mm : float
        Thresholds of the rule-based detector: HU above which a pixel is
        tissue, the smallest fraction of the field of view that thick tissue
        must cover, and the thinnest structure (mm) that counts as body.

    Returns
    -------
    xarray.DataArray
        ``label`` (z) int8 class codes, dask-backed; ``attrs["classes"]``
        (also CF ``flag_values`` / ``flag_meanings``) names them; coordinates
        ``p_<class>`` (z) hold each class's probability (0 or 1 for the
        rule) and, for the rule, ``body_fraction`` (z) the measured
        fraction. Labels and probabilities share one graph: computing them
        together reads each slice once.

    Raises
    ------
    ValueError
        ``ds`` is not a volume, a bad batch size or threshold, a model for
        another task.

    Examples
    --------
    >>> import numpy as np, xarray as xr, ctvol
    >>> from ctvol.testing import head_phantom
    >>> hu = head_phantom((3, 64, 64)); hu[0] = -1000          # an air slice first
    >>> ds = xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": [0.0, 2.0, 4.0]},
    ...                 attrs={"spacing": [2.0, 1.0, 1.0]}).chunk({"z": 2})
    >>> labels = ctvol.classify_slices(ds)                    # lazy
    >>> labels.attrs["classes"], labels.values.tolist()
    (['blank', 'body'], [0, 1, 1])
    """
    check_volume(ds, min_slices=1)
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")
    if model is None:
        if not 0 <= min_fraction <= 1:
            raise OptionError(f"min_fraction must be in [0, 1], got {min_fraction!r}")
        if min_thickness_mm < 0:
            raise OptionError(f"min_thickness_mm must be >= 0, got {min_thickness_mm!r}")
        pixel = pixel_mm(ds)
        params = {"tissue_hu": float(tissue_hu), "min_thickness_mm": float(min_thickness_mm)}
        out = slice_map(ds, _rule_block, 3, token="ctvol-blank-rule", pixel=pixel,
                        params=params, min_fraction=float(min_fraction))
        method = (f"rule(tissue_hu={tissue_hu:g}, min_thickness_mm={min_thickness_mm:g}, "
                  f"min_fraction={min_fraction:g}, pixel_mm=({pixel[0]:.4g}, {pixel[1]:.4g}))")
        return _labels_array(ds, out[:, :2], list(BLANK_CLASSES), method,
                             {"body_fraction": ("z", out[:, 2])})

    loaded = resolve(model, "classify")
    dev = resolve_device(device)
    source = loaded.path or loaded
    probs = slice_map(ds, model_block, loaded.outputs, model=source,
                      gpu=cluster_has_gpu(), token="ctvol-classify", device=dev,
                      batch_size=int(batch_size))
    return _labels_array(ds, probs, loaded.classes,
                         f"model({loaded.path or loaded.digest[:12]})")
