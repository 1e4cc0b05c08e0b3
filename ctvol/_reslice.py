"""``ctvol.reslice``: generate the k-1 slices between acquired neighbours, lazily."""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._compute import cluster_has_gpu
from ._deps import available
from ._volume import check_factor, derive_attrs, uneven_step
from .errors import GeometryError, ModelError, OptionError, VolumeError
from .inference import reslice_block
from .metrics import map_slice_metrics
from .models import RESLICE_FORMAT, as_model, bundled_models, bundled_name
from .models._runtime import graph_model, remember_model, resolve_device

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["auto_text", "plan_factor", "reslice", "self_check"]

METHODS = ("auto", "unet", "linear")
#: Factors of the paper's re-slice systems (1/3, 1/4, 1/5).
PAPER_FACTORS = (3, 4, 5)
#: Relative tolerance of target-spacing arithmetic (is ``spacing=`` reached, is a
#: series already there). Even slice steps are checked with the spacing tolerance,
#: ``_volume.uneven_step``.
RTOL = 1e-3


def plan_factor(
    dz: float, *, factor: int | None = None, spacing: float | None = None,
    factors: Iterable[int] | None = None,
) -> tuple[int, int]:
    """Choose the re-slice factor k and the keep-every-m step for a target.

    Parameters
    ----------
    dz : float
        Acquired slice spacing in mm.
    factor : int, optional
        Use this factor (m = 1).
    spacing : float, optional
        Target spacing in mm: find k (from ``factors``) and m with
        ``dz / k * m == spacing``, m dividing k so acquired slices are kept;
        the smallest such k wins.
    factors : iterable of int, optional
        Factors available (models that exist); default 2..10.

    Returns
    -------
    (k, m)

    Raises
    ------
    ValueError
        Neither or both of factor/spacing, or an unreachable spacing (the
        message lists the reachable spacings).

    Examples
    --------
    >>> plan_factor(4.0, spacing=2.0, factors=(3, 4, 5))   # the paper's example
    (4, 2)
    >>> plan_factor(5.0, spacing=1.0, factors=(3, 4, 5))
    (5, 1)
    """
    if (factor is None) == (spacing is None):
        raise OptionError("give exactly one of factor= or spacing=")
    if factor is not None:
        return check_factor(factor), 1
    assert spacing is not None
    if not spacing > 0:
        raise OptionError(f"spacing must be > 0 mm, got {spacing!r}")
    cands = sorted(set(factors)) if factors is not None else list(range(2, 11))
    reachable: dict[float, tuple[int, int]] = {}
    for k in cands:
        for m in range(1, k):
            if k % m == 0:
                reachable.setdefault(round(dz * m / k, 6), (k, m))
    for s, (k, m) in sorted(reachable.items(), key=lambda kv: kv[1]):
        if abs(s - spacing) <= RTOL * spacing:
            return k, m
    listed = ", ".join(f"{s:g}" for s in sorted(reachable, reverse=True)) or "none"
    raise OptionError(
        f"target spacing {spacing:g} mm is not reachable from dz = {dz:g} mm with factors "
        f"{cands}: reachable spacings are {listed} mm"
    )


#: PSNR (dB) counted for a slice reproduced exactly (MSE 0) in the self-check.
EXACT_PSNR = 100.0


def self_check(
    ds: xr.Dataset, factor: int, *, model: Any = None, batch_size: int = 16,
    device: str | None = None, amp: bool = False,
) -> dict[str, Any]:
    """Score the U-net against linear on a series' own acquired slices.

    Pairs (i, i+k) of acquired slices (i = 0, k, 2k, ...) predict the
    acquired slices between them, with both methods: the evaluation protocol
    of :func:`ctvol.evaluate` (HU clipped to [-1024, 1024] → [0, 1], data
    range 1), on the user's own data. It costs about 1/k of the reslice
    (docs/reslice.md). Runs now (it computes) on the active scheduler.

    Parameters
    ----------
    ds : xarray.Dataset
        The series (``hu`` on z, y, x), evenly spaced.
    factor : int
        Re-slice factor k.
    model : str, path or ResliceModel, optional
        The U-net; default the bundled model for k.

    Returns
    -------
    dict
        ``method`` (``"unet"`` or ``"linear"``: the U-net only when its mean
        PSNR **and** mean SSIM beat linear's), ``reason``, ``slices`` (number
        of slices scored), ``psnr_unet``, ``psnr_linear``, ``ssim_unet``,
        ``ssim_linear`` (means over the scored slices; a slice reproduced
        exactly counts as :data:`EXACT_PSNR` dB rather than infinity).
    """
    import dask

    k = check_factor(factor)
    n = ds.sizes["z"]
    base = {"slices": 0, "psnr_unet": None, "psnr_linear": None, "ssim_unet": None,
            "ssim_linear": None}
    if n < k + 1:
        return {**base, "method": "linear",
                "reason": f"too short for the self-check: {n} slice(s), factor {k} needs at "
                          f"least {k + 1} (one pair and the {k - 1} slice(s) between)"}
    m = (n - 1) // k * k + 1
    block = ds.isel(z=slice(0, m))
    kept = block.isel(z=slice(None, None, k))
    outs = [reslice(kept, k, method=meth, model=model if meth == "unet" else None,
                    batch_size=batch_size, device=device, amp=amp)
            for meth in ("unet", "linear")]
    gen = np.asarray(outs[0]["generated"].values, dtype=bool)
    (metrics,) = dask.compute(map_slice_metrics(block["hu"].data, outs[0]["hu"].data,
                                                outs[1]["hu"].data))
    metrics = np.asarray(metrics)[gen]  # (slices, method, metric)
    psnr_u, psnr_l = (float(np.minimum(metrics[:, j, 0], EXACT_PSNR).mean()) for j in (0, 1))
    ssim_u, ssim_l = (float(metrics[:, j, 1].mean()) for j in (0, 1))
    better = psnr_u > psnr_l and ssim_u > ssim_l
    verdict = ("U-net better in PSNR and SSIM" if better
               else "U-net not better than linear in both PSNR and SSIM")
    return {"method": "unet" if better else "linear",
            "reason": f"self-check on {int(gen.sum())} acquired slices: {verdict}",
            "slices": int(gen.sum()), "psnr_unet": psnr_u, "psnr_linear": psnr_l,
            "ssim_unet": ssim_u, "ssim_linear": ssim_l}


def reslice(
    ds: xr.Dataset,
    factor: int | None = None,
    *,
    spacing: float | None = None,
    method: str = "auto",
    model: Any = None,
    batch_size: int = 16,
    device: str | None = None,
    amp: bool = False,
) -> xr.Dataset:
    """Generate the slices between acquired neighbours (lazy, as a Dask graph).

    Parameters
    ----------
    ds : xarray.Dataset
        A volume (``docs/storage.md``): ``hu`` (z, y, x) in HU, evenly spaced
        along z (mm).
    factor : int, optional
        Re-slice factor k >= 2: the output spacing is dz / k.
    spacing : float, optional
        Target spacing in mm instead of ``factor`` (see :func:`plan_factor`);
        with ``method="unet"`` only factors of the available models count. A
        series already at the target passes through unchanged (``generated``
        all false, ``attrs["reslice"]["unchanged"]``, its history says so); a
        target coarser than the series is refused (reslice never drops
        acquired slices).
    method : {"auto", "unet", "linear"}, default "auto"
        ``"linear"`` is the paper's baseline (distance-weighted average);
        ``"unet"`` forces the U-net. ``"auto"`` runs :func:`self_check` on
        this series first (computing about 1/k of the reslice now) and uses
        the U-net only when it beats linear there in mean PSNR and SSIM;
        linear when it does not, when the series is too short for the check,
        or when there is no U-net for the factor. The decision and both
        scores are in ``attrs["reslice"]["auto"]`` and the history.
    model : str, path or ResliceModel, optional
        Checkpoint for ``"unet"`` / ``"auto"``; default: the bundled model
        for the factor.
    batch_size : int, default 16
        Slice pairs per forward pass.
    device : str, optional
        ``"cuda"`` / ``"cpu"``; default CUDA when available.
    amp : bool, default False
        bf16 autocast on CUDA.

    Returns
    -------
    xarray.Dataset
        ``hu`` with (N-1)·k + 1 slices at dz/k (every m-th kept for a spacing
        target), a boolean ``generated`` coordinate, ``acquired_index`` (input
        slice index, -1 for generated slices), updated spacing and history.
        Output slice i·k is input slice i, bit for bit.

    Raises
    ------
    ValueError
        Bad factor, method, batch size, or an unreachable spacing.
    GeometryError
        Fewer than 2 slices, uneven spacing, or a target spacing coarser than
        the series.
    FileNotFoundError
        ``method="unet"`` without a model for the factor.

    Examples
    --------
    >>> import numpy as np, xarray as xr, ctvol
    >>> hu = np.stack([np.zeros((4, 4)), np.full((4, 4), 300)]).astype("int16")
    >>> ds = xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": [0.0, 3.0]})
    >>> out = ctvol.reslice(ds.chunk(), 3, method="linear")
    >>> out.hu[:, 0, 0].values.tolist(), out.z.values.tolist()
    ([0, 100, 200, 300], [0.0, 1.0, 2.0, 3.0])
    """
    import dask.array as da
    import xarray as xr

    if method not in METHODS:
        raise OptionError(f"method must be one of {list(METHODS)}, got {method!r}")
    if (factor is None) == (spacing is None):
        raise OptionError("give exactly one of factor= or spacing=")
    if factor is not None:
        check_factor(factor)
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")
    if "hu" not in ds or ds["hu"].dims != ("z", "y", "x"):
        raise VolumeError("ds must hold 'hu' with dims ('z', 'y', 'x') (docs/storage.md)")
    name = ds.attrs.get("series_uid", "the series")
    z = np.asarray(ds["z"].values, dtype=np.float64)  # an index coordinate: in memory
    if z.size < 2:
        raise GeometryError(f"{name} has {z.size} slice(s): reslicing needs at least 2")
    dz, bad = uneven_step(z)
    if bad is not None:
        steps = np.diff(z)
        raise GeometryError(
            f"{name} has uneven slice spacing: a {steps[bad]:.4g} mm step at z={z[bad]:.2f} mm "
            f"(expected {dz:.4g} mm). Ingest splits such series into contiguous runs "
            "(ctvol.ingest(..., split_gaps=True), keys ending _r1, _r2); reslice each run"
        )

    if spacing is not None:
        if not spacing > 0:
            raise OptionError(f"spacing must be > 0 mm, got {spacing!r}")
        if abs(spacing - dz) <= RTOL * spacing:
            return _unchanged(ds, z, dz, method)
        if spacing > dz:
            raise GeometryError(
                f"{name} is at {dz:.4g} mm, finer than the target spacing {spacing:g} mm: "
                "reslice generates slices between acquired ones and never drops acquired "
                "slices (it does not downsample); choose a target spacing <= "
                f"{dz:.4g} mm, or leave this series out"
            )

    loaded = None
    factors = None
    auto: dict[str, Any] | None = None
    if method == "auto":
        no_torch = model is None and not available("torch")
        if model is not None:
            loaded = as_model(model)
            factors = [loaded.factor]
        else:
            factors = [] if no_torch else sorted(set(bundled_models().values()))
        try:
            k, m = plan_factor(dz, factor=factor, spacing=spacing, factors=factors)
        except ValueError:
            if model is not None or spacing is None:
                raise
            k, m = plan_factor(dz, spacing=spacing)
        if loaded is None and k in factors:
            loaded = as_model(bundled_name(k))
        if loaded is not None and loaded.factor != k:
            raise ModelError(
                f"model {loaded!r} generates factor {loaded.factor}, but factor {k} was "
                f"asked; use factor={loaded.factor} or a model trained for {k}"
            )
        if loaded is None:
            why = ("torch is not installed (pip install 'ctvol[torch]')" if no_torch
                   else f"no U-net for factor {k}")
            auto = {"method": "linear", "reason": why, "slices": 0,
                    "psnr_unet": None, "psnr_linear": None, "ssim_unet": None,
                    "ssim_linear": None}
        else:
            auto = self_check(ds, k, model=loaded, batch_size=batch_size, device=device,
                              amp=amp)
        method = auto["method"]
        if method == "linear":
            loaded = None
        factors = [k]  # the plan below gives (k, m) again
    if method == "unet" and auto is None:
        if model is not None:
            loaded = as_model(model)
            factors = [loaded.factor]
        elif spacing is not None:
            bundled_name(None)  # raises when nothing is bundled
            factors = sorted(set(bundled_models().values()))
    k, m = plan_factor(dz, factor=factor, spacing=spacing, factors=factors)
    if method == "unet":
        if loaded is None:
            loaded = as_model(bundled_name(k))
        if loaded.factor != k:
            raise ModelError(
                f"model {loaded!r} generates factor {loaded.factor}, but factor {k} was "
                f"asked; use factor={loaded.factor} or a model trained for {k}"
            )
    # device=None is resolved where the blocks run (a GPU worker of a cluster
    # whose client has none); here only for the threaded scheduler's cache.
    dev = resolve_device(device) if method == "unet" else "cpu"
    # Checkpoints on disk travel to workers as their path (each worker process
    # loads it once; the threaded scheduler reuses the copy loaded here); an
    # in-memory model travels as one graph key named by its digest.
    model_arg: Any = None
    if loaded is not None:
        model_arg = graph_model(loaded, "reslice")
        remember_model(model_arg, dev, RESLICE_FORMAT, loaded)

    hu = ds["hu"].data
    if not isinstance(hu, da.Array):
        hu = da.from_array(hu, chunks=(32, -1, -1))
    hu = hu.rechunk({1: -1, 2: -1})
    zc = hu.chunks[0]
    # The slice after each block (the first of the next block; the last slice
    # again for the last block, where it is unused): one slice per block.
    starts = np.cumsum((0, *zc))
    # (concatenated one-slice views, not a fancy index + rechunk: dask's rechunk
    # imports distributed, ~0.8 s, even on the threaded scheduler)
    after = da.concatenate([hu[i : i + 1] for i in (*starts[1:-1].tolist(), int(starts[-1]) - 1)])
    block_ids = da.arange(len(zc), chunks=1)
    out_chunks = tuple(c * k for c in zc[:-1]) + ((zc[-1] - 1) * k + 1,)

    import dask

    # U-net blocks ask for a GPU where the cluster's workers declare one. Graph
    # optimisation can drop annotations (dask/dask#7036): ctvol.write computes
    # without it; see docs/reslice.md for computing such graphs yourself.
    gpu = method == "unet" and cluster_has_gpu()
    with dask.annotate(resources={"GPU": 1}) if gpu else contextlib.nullcontext():
        # blockwise, not map_blocks: `after` has one slice per block, and
        # align_arrays=False keeps the blocks paired by index, not rechunked.
        out = da.blockwise(
            _block, "zyx", hu, "zyx", after, "zyx", block_ids, "z", model_arg, None,
            k=k, nblocks=len(zc), method=method, device=device, batch_size=batch_size, amp=amp,
            adjust_chunks={"z": out_chunks}, align_arrays=False, concatenate=False,
            dtype=np.int16, meta=np.empty((0, 0, 0), dtype=np.int16),
            token=f"reslice-{method}-x{k}",
        )

    n_out = (z.size - 1) * k + 1
    idx = np.arange(n_out)
    generated = idx % k != 0
    z_out = z[0] + idx * (dz / k)
    z_out[~generated] = z  # acquired slices keep their exact positions
    acquired = np.where(generated, -1, idx // k)
    params: dict[str, Any] = {"factor": k, "keep_every": m,
                              "method": "auto" if auto is not None else method}
    if auto is not None:  # the decision and its scores (all of them: attrs["reslice"]["auto"])
        params.update(chosen=method, decision=auto_text(auto))
    if loaded is not None:
        params["model"] = loaded.path or loaded.digest[:12]
    attrs = derive_attrs(ds.attrs, "reslice", params)
    spacing_in = list(attrs.get("spacing", [dz, np.nan, np.nan]))
    attrs["spacing"] = [dz * m / k, *spacing_in[1:]]
    attrs["reslice"] = {"factor": k, "keep_every": m, "method": method,
                        "source_spacing_mm": dz,
                        "model_digest": loaded.digest if loaded is not None else None}
    if auto is not None:
        attrs["reslice"]["auto"] = auto
    coords = {"z": ("z", z_out, ds["z"].attrs), "generated": ("z", generated),
              "acquired_index": ("z", acquired)}
    for c in ("y", "x"):
        if c in ds.coords:
            coords[c] = ds[c]
    coords.update(_slice_provenance(ds, generated, acquired, k))
    result = xr.Dataset({"hu": (("z", "y", "x"), out, ds["hu"].attrs)}, coords=coords,
                        attrs=attrs)
    return result.isel(z=slice(None, None, m)) if m > 1 else result


def auto_text(auto: dict[str, Any]) -> str:
    """One line for the history and the CLI: the decision and both scores."""
    if auto.get("psnr_unet") is None:
        return auto["reason"]
    return (f"{auto['reason']}: PSNR unet {auto['psnr_unet']:.2f} / linear "
            f"{auto['psnr_linear']:.2f} dB, SSIM unet {auto['ssim_unet']:.4f} / linear "
            f"{auto['ssim_linear']:.4f}")


def _slice_provenance(ds: xr.Dataset, generated: np.ndarray, acquired: np.ndarray,
                      k: int) -> dict[str, Any]:
    """``sop_uid`` and ``position`` of the output slices, when the input has them (lazily).

    An acquired slice keeps its SOPInstanceUID and ImagePositionPatient; a
    generated slice has no SOPInstanceUID ("") and lies on the line between
    its neighbours' positions, so the shear of a tilted series carries over
    (exports write these positions; docs/export.md). Dask-backed coordinates
    (a store opened with open_series) stay dask-backed: nothing is computed.
    """
    import xarray as xr

    out: dict[str, Any] = {}
    n = ds.sizes["z"]
    is_gen = xr.Variable("z", generated)
    source = np.maximum(acquired, 0)
    if "sop_uid" in ds.coords and ds["sop_uid"].dims == ("z",):
        out["sop_uid"] = xr.where(is_gen, "", ds["sop_uid"].variable[source])
    if "position" in ds.coords and ds["position"].dims[:1] == ("z",) \
            and ds["position"].shape == (n, 3):
        pos = ds["position"].variable
        i = np.arange(generated.size)
        lo = np.minimum(i // k, n - 2)
        frac = xr.Variable("z", (i - lo * k) / k)
        between = pos[lo] + (pos[lo + 1] - pos[lo]) * frac
        position = xr.where(is_gen, between, pos[source]).transpose(*pos.dims)
        position.attrs = dict(pos.attrs)
        out["position"] = position
    return out


def _unchanged(ds: xr.Dataset, z: np.ndarray, dz: float, method: str) -> xr.Dataset:
    """A series already at the target spacing, passed through: the same slices,
    none generated, with the same coordinates and attrs as a resliced one."""
    import xarray as xr

    attrs = derive_attrs(ds.attrs, "reslice", {"method": method, "unchanged": True,
                                               "spacing_mm": float(f"{dz:.6g}")})
    attrs["reslice"] = {"factor": 1, "keep_every": 1, "method": method,
                        "source_spacing_mm": dz, "model_digest": None, "unchanged": True}
    coords: dict[str, Any] = {"z": ("z", z, ds["z"].attrs),
                              "generated": ("z", np.zeros(z.size, bool)),
                              "acquired_index": ("z", np.arange(z.size))}
    for c in ("y", "x", "sop_uid", "position"):
        if c in ds.coords:
            coords[c] = ds[c]
    return xr.Dataset({"hu": (("z", "y", "x"), ds["hu"].data, ds["hu"].attrs)},
                      coords=coords, attrs=attrs)


def _block(cur: np.ndarray, after: np.ndarray, block_id: np.ndarray, model: Any, *, k: int,
           nblocks: int, method: str, device: str | None, batch_size: int,
           amp: bool) -> np.ndarray:
    last = int(block_id[0]) == nblocks - 1
    return reslice_block(cur, after, k=k, last=last, method=method, model=model,
                         device=device, batch_size=batch_size, amp=amp)
