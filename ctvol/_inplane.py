"""``ctvol.upsample_inplane`` / ``ctvol.downsample_inplane``: in-plane resolution, lazily.

Conventions (``docs/inplane.md``):

- Bilinear upsampling is ``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False)``: pixels are areas, the field of view is kept, and
  output pixel j has its centre at input pixel coordinate ``(j + 0.5)/f - 0.5``
  (edge pixels clamp to the border value). In mm, with input centres
  ``y0 + i·dy``: ``y'_j = y0 - dy/2 + (j + 0.5)·dy/f``, spacing ``dy/f``.
- Area downsampling is the mean of each f × f block
  (``skimage.measure.block_reduce(np.mean)``), rounded to whole HU; the new
  centre is the mean of the block's centres. Downsampling then upsampling by
  the same f returns exactly the original pixel grid.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

from ._compute import cluster_has_gpu
from ._deps import require
from ._volume import axis_spacing, check_factor, check_volume, derive_attrs
from .errors import GeometryError, ModelError, ModelNotFoundError, OptionError
from .intensity import to_hu_int16
from .models import INPLANE_FORMAT
from .models._runtime import cached_model, graph_model, remember_model, resolve_device
from .models.inplane import InplaneModel, bundled_inplane_models, load_inplane_model

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["bilinear", "bilinear_hu", "downsample_inplane", "inplane_block", "upsample_inplane"]

METHODS = ("unet", "bilinear")



def _as_dask(hu: Any) -> Any:
    import dask.array as da

    if not isinstance(hu, da.Array):
        hu = da.from_array(np.asarray(hu), chunks=(32, -1, -1))
    return hu.rechunk({1: -1, 2: -1})


def bilinear(hu: np.ndarray, factor: int, *, batch: int = 8) -> np.ndarray:
    """Bilinear upsampling of a (n, H, W) block → (n, f·H, f·W) float32, unrounded.

    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
    on float32, ``batch`` slices at a time (bounded temporaries).
    """
    import torch
    import torch.nn.functional as F

    n, h, w = hu.shape
    out = np.empty((n, h * factor, w * factor), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, n, batch):
            t = torch.from_numpy(np.ascontiguousarray(hu[s : s + batch], dtype=np.float32))
            out[s : s + batch] = F.interpolate(t[:, None], size=(h * factor, w * factor),
                                               mode="bilinear", align_corners=False)[:, 0].numpy()
    return out


def bilinear_hu(hu: np.ndarray, factor: int, *, batch: int = 8) -> np.ndarray:
    """:func:`bilinear` rounded to whole HU, int16, without full-size float temporaries.

    Bilinear values lie between their int16 neighbours, so no clipping is needed.
    """
    import torch
    import torch.nn.functional as F

    n, h, w = hu.shape
    out = np.empty((n, h * factor, w * factor), dtype=np.int16)
    with torch.inference_mode():
        for s in range(0, n, batch):
            t = torch.from_numpy(np.ascontiguousarray(hu[s : s + batch], dtype=np.float32))
            up = F.interpolate(t[:, None], size=(h * factor, w * factor), mode="bilinear",
                               align_corners=False)[:, 0]
            torch.round(up, out=up)  # half to even, as np.rint
            out[s : s + batch] = up.numpy()
    return out


def normalise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Grey values → [0, 1]: clip to [lo, hi], map linearly (float32)."""
    out = np.clip(values, lo, hi).astype(np.float32, copy=False)
    out -= np.float32(lo)
    out /= np.float32(hi - lo)
    return out


def inplane_block(hu: np.ndarray, rng: Any = None, *, factor: int, method: str,
                  model: Any = None, device: str = "cpu", batch_size: int = 8,
                  amp: bool = False) -> np.ndarray:
    """Upsample one z-block: (n, H, W) int16 → (n, f·H, f·W) int16 HU (rounded).

    Parameters
    ----------
    hu : (n, H, W) integer array, HU or grey values
    rng : (2,) array, optional
        (min, max) of the whole input volume, for ``"minmax"`` models.
    factor : int
    method : {"bilinear", "unet"}
    model : checkpoint path/name or InplaneModel, for ``"unet"``
    """
    if method == "bilinear":
        return bilinear_hu(hu, factor)
    up = bilinear(hu, factor)

    m = cached_model(model, device, INPLANE_FORMAT)  # once per worker process and device
    norm = m.normalisation
    if norm["kind"] == "window":
        lo, hi = norm["window"]
    else:
        lo, hi = float(rng[0]), float(rng[1])
        if not hi > lo:  # a constant volume: nothing to super-resolve
            return to_hu_int16(up)
    x = normalise(up, lo, hi)
    y = m.predict(x, batch_size=batch_size, amp=amp)
    scale = np.float32(hi - lo)
    if m.residual:
        # The correction in grey units, added to the unclipped bilinear slice:
        # inside [lo, hi] this equals lo + y·(hi - lo); outside, values beyond
        # the window keep their bilinear value plus the learned correction.
        y -= x
        y *= scale
        y += up
    else:
        np.clip(y, 0.0, 1.0, out=y)
        y *= scale
        y += np.float32(lo)
    return to_hu_int16(y)


def _new_axis(c: np.ndarray, factor: int) -> np.ndarray:
    """Pixel centres after bilinear upsampling (align_corners=False), in mm."""
    c = np.asarray(c, dtype=np.float64)
    d = float(c[1] - c[0]) if c.size > 1 else 1.0
    j = np.arange(c.size * factor, dtype=np.float64)
    return c[0] - d / 2 + (j + 0.5) * (d / factor)


def _area_axis(c: np.ndarray, factor: int) -> np.ndarray:
    """Pixel centres after f-fold area averaging: the mean of each block's centres."""
    return np.asarray(c, dtype=np.float64).reshape(-1, factor).mean(axis=1)


def _spacing(ds: Any, dim: str) -> float:
    step = axis_spacing(ds, dim)
    return step if np.isfinite(step) else 1.0


def _regrid(ds: Any, data: Any, y_new: np.ndarray | None, x_new: np.ndarray | None,
            factor_y: float, attrs_update: dict[str, Any],
            history: tuple[str, dict[str, Any]]) -> Any:
    """A new Dataset: ``data`` as hu on the new y/x grid, geometry attrs moved with it."""
    import xarray as xr

    attrs = derive_attrs(ds.attrs, *history)
    dy, dx = _spacing(ds, "y"), _spacing(ds, "x")
    sp = list(attrs.get("spacing", [np.nan, dy, dx]))
    attrs["spacing"] = [sp[0], dy / factor_y, dx / factor_y]
    shift = None
    if y_new is not None and x_new is not None and "y" in ds.coords and "x" in ds.coords:
        sy = float(y_new[0] - ds["y"].values[0])
        sx = float(x_new[0] - ds["x"].values[0])
        orient = attrs.get("orientation")
        if orient is not None and len(orient) == 6:
            o = np.asarray(orient, dtype=np.float64)
            shift = o[:3] * sx + o[3:] * sy  # row cosine along x, column cosine along y
            if "origin" in attrs and attrs["origin"] is not None:
                attrs["origin"] = (np.asarray(attrs["origin"], dtype=np.float64)
                                   + shift).tolist()
    attrs.update(attrs_update)
    coords: dict[str, Any] = {}
    for name, c in ds.coords.items():
        if name in ("y", "x"):
            continue
        if "y" in c.dims or "x" in c.dims:
            continue  # per-pixel coordinates do not survive a new grid
        if name == "position" and shift is not None:
            c = c + xr.DataArray(shift, dims=c.dims[-1:])
            c.attrs = ds[name].attrs
        coords[str(name)] = c
    if y_new is not None:
        coords["y"] = ("y", y_new, ds["y"].attrs)
    if x_new is not None:
        coords["x"] = ("x", x_new, ds["x"].attrs)
    return xr.Dataset({"hu": (("z", "y", "x"), data, ds["hu"].attrs)}, coords=coords,
                      attrs=attrs)


def upsample_inplane(
    ds: xr.Dataset,
    factor: int = 2,
    *,
    method: str = "unet",
    model: Any = None,
    batch_size: int = 8,
    device: str | None = None,
    amp: bool = False,
) -> xr.Dataset:
    """Super-resolve every slice in-plane by ``factor`` (lazy, a Dask graph over z-blocks).

    Bilinear upsampling to the fine grid, then (``method="unet"``) an in-plane
    U-net, as in the microCT study.

    Parameters
    ----------
    ds : xarray.Dataset
        A volume (``docs/storage.md``): ``hu`` (z, y, x) in HU (or grey
        values), y/x coordinates in mm.
    factor : int, default 2
        In-plane factor f >= 2: the output is (z, f·y, f·x) at spacing dy/f, dx/f.
    method : {"unet", "bilinear"}, default "unet"
        ``"bilinear"``: ``torch.nn.functional.interpolate(mode="bilinear",
        align_corners=False)``, rounded to whole HU.
    model : str, path or InplaneModel, optional
        Checkpoint for ``"unet"``; default: the bundled in-plane model for the factor.
    batch_size : int, default 8
        Slices per forward pass.
    device : str, optional
        ``"cuda"`` / ``"cpu"``; default CUDA when available.
    amp : bool, default False
        bf16 autocast on CUDA.

    Returns
    -------
    xarray.Dataset
        ``hu`` (z, f·y, f·x) int16, rounded; y/x coordinates at the new pixel
        centres (mm), spacing/origin/positions updated, ``attrs["inplane"]``
        (``generated: True`` marks the pixels as super-resolved) and
        ``ctvol_history``. z-chunks follow the input's.

    Raises
    ------
    ValueError
        Bad factor, method or batch size; a model trained for another factor.
    FileNotFoundError
        ``method="unet"`` with no model given and none bundled for the factor.

    Examples
    --------
    >>> import numpy as np, xarray as xr, ctvol
    >>> hu = np.array([[[0, 100]]], dtype="int16")                       # 1 x 1 x 2
    >>> ds = xr.Dataset({"hu": (("z", "y", "x"), hu)},
    ...                 coords={"z": [0.0], "y": [0.0], "x": [0.0, 1.0]}).chunk()
    >>> up = ctvol.upsample_inplane(ds, 2, method="bilinear")
    >>> up.hu.values[0, 0].tolist(), up.x.values.tolist()
    ([0, 25, 75, 100], [-0.25, 0.25, 0.75, 1.25])
    """
    require("torch", "ctvol.upsample_inplane")
    import dask
    import dask.array as da

    f = check_factor(factor)
    if method not in METHODS:
        raise OptionError(f"method must be one of {list(METHODS)}, got {method!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_volume(ds)
    loaded = None
    if method == "unet":
        loaded = _resolve_model(model, f)
    dev = resolve_device(device) if method == "unet" else "cpu"
    hu = _as_dask(ds["hu"].data)
    rng: Any = None
    if loaded is not None and loaded.normalisation["kind"] == "minmax":
        # The volume's own range: one lazy reduction, shared by every block.
        rng = da.stack([hu.min(), hu.max()]).astype(np.float64).rechunk(-1)
        rng = rng.to_delayed().ravel()[0]
    source: Any = None
    if loaded is not None:
        source = graph_model(loaded, "inplane")  # a path travels light; else one key
        remember_model(source, dev, INPLANE_FORMAT, loaded)
    ny, nx = hu.shape[1:]
    gpu = method == "unet" and cluster_has_gpu()
    with dask.annotate(resources={"GPU": 1}) if gpu else contextlib.nullcontext():
        out = da.blockwise(
            _block, "zyx", hu, "zyx", rng, None, source, None,
            factor=f, method=method, device=dev, batch_size=batch_size, amp=amp,
            adjust_chunks={"y": ny * f, "x": nx * f}, concatenate=True,
            dtype=np.int16, meta=np.empty((0, 0, 0), dtype=np.int16),
            token=f"upsample-inplane-{method}-x{f}-{dask.base.tokenize(hu, rng, source)}",
        )
    y_new = _new_axis(ds["y"].values, f) if "y" in ds.coords else None
    x_new = _new_axis(ds["x"].values, f) if "x" in ds.coords else None
    params: dict[str, Any] = {"factor": f, "method": method}
    if loaded is not None:
        params["model"] = loaded.path or loaded.digest[:12]
    dy, dx = _spacing(ds, "y"), _spacing(ds, "x")
    info = {"generated": True, "factor": f, "method": method,
            "source_spacing_mm": [dy, dx],
            "model_digest": loaded.digest if loaded is not None else None,
            "normalisation": loaded.normalisation if loaded is not None else None}
    return _regrid(ds, out, y_new, x_new, f, {"inplane": info},
                   ("upsample_inplane", params))


def _block(hu: np.ndarray, rng: Any, model: Any, **kw: Any) -> np.ndarray:
    return inplane_block(hu, rng, model=model, **kw)


def _resolve_model(model: Any, factor: int) -> Any:
    if model is None:
        bundled = bundled_inplane_models()
        names = [n for n, f in bundled.items() if f == factor]
        if not names:
            have = ", ".join(f"{n} (x{f})" for n, f in bundled.items()) or "none"
            raise ModelNotFoundError(
                f"no bundled in-plane U-net for factor {factor} (bundled in-plane models: "
                f"{have}); pass model=PATH to a checkpoint (ctvol.train_inplane), or use "
                "method='bilinear'"
            )
        model = names[0]
    loaded = model if isinstance(model, InplaneModel) else load_inplane_model(model)
    if loaded.factor != factor:
        raise ModelError(
            f"model {loaded!r} upsamples by {loaded.factor}, but factor {factor} was asked; "
            f"use factor={loaded.factor} or a model trained for {factor}"
        )
    return loaded


def _area_block(hu: np.ndarray, *, factor: int) -> np.ndarray:
    from skimage.measure import block_reduce

    return to_hu_int16(block_reduce(hu.astype(np.float64), (1, factor, factor), np.mean))


def area_downsample(hu: np.ndarray, factor: int) -> np.ndarray:
    """Area downsampling of a (n, H, W) block: f × f means rounded to int16 (H, W divisible)."""
    return _area_block(np.asarray(hu), factor=factor)


def downsample_inplane(ds: xr.Dataset, factor: int = 2) -> xr.Dataset:
    """Average every f × f block of pixels (lazy): the synthetic low-resolution volume.

    Parameters
    ----------
    ds : xarray.Dataset
        ``hu`` (z, y, x) with y and x sizes divisible by ``factor``.
    factor : int, default 2

    Returns
    -------
    xarray.Dataset
        ``hu`` (z, y/f, x/f) int16 (means rounded to whole HU), y/x at the
        blocks' mean centres, spacing × f, ``attrs["inplane_downsampled"]``.

    Raises
    ------
    ValueError
        Bad factor.
    GeometryError
        y or x not divisible by the factor (crop first, e.g. ``ds.isel(y=slice(0, -1))``).

    Examples
    --------
    >>> import numpy as np, xarray as xr, ctvol
    >>> hu = np.arange(16, dtype="int16").reshape(1, 4, 4)
    >>> ds = xr.Dataset({"hu": (("z", "y", "x"), hu)},
    ...                 coords={"z": [0.0], "y": np.arange(4.0), "x": np.arange(4.0)})
    >>> lo = ctvol.downsample_inplane(ds, 2)
    >>> lo.hu.values[0].tolist(), lo.y.values.tolist()
    ([[2, 4], [10, 12]], [0.5, 2.5])
    """
    import dask.array as da

    f = check_factor(factor)
    check_volume(ds)
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    if ny % f or nx % f:
        raise GeometryError(
            f"{ds.attrs.get('series_uid', 'the volume')} is {ny} x {nx} pixels, not divisible "
            f"by factor {f}; crop it first (e.g. ds.isel(y=slice(0, {ny - ny % f}), "
            f"x=slice(0, {nx - nx % f})))"
        )
    hu = _as_dask(ds["hu"].data)
    out = da.map_blocks(_area_block, hu, factor=f, chunks=(hu.chunks[0], ny // f, nx // f),
                        dtype=np.int16, meta=np.empty((0, 0, 0), dtype=np.int16))
    y_new = _area_axis(ds["y"].values, f) if "y" in ds.coords else None
    x_new = _area_axis(ds["x"].values, f) if "x" in ds.coords else None
    dy, dx = _spacing(ds, "y"), _spacing(ds, "x")
    info = {"factor": f, "method": "area", "source_spacing_mm": [dy, dx]}
    return _regrid(ds, out, y_new, x_new, 1.0 / f, {"inplane_downsampled": info},
                   ("downsample_inplane", {"factor": f, "method": "area"}))
