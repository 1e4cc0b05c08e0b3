"""``ctvol.VolumeDataset``: slices or 3-D patches of a store as dict samples for torch.

Each sample is a dict, as MONAI's dictionary transforms expect: the pixels
under ``"image"`` (channel first, float32) and their millimetre coordinates
beside them. Only the voxels of a sample are read from Zarr, when it is asked
for; every DataLoader worker opens its own read handles (as
:class:`ctvol.training.PairWindows` does), so the dataset is safe with
``num_workers > 0``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._deps import require
from ..errors import DataError, OptionError, SeriesNotFoundError
from ..intensity import to_unit
from ..io._handles import HuHandles
from ..io._layout import store_url
from ..io.store import list_series, open_series

__all__ = ["VolumeDataset"]


def _starts(n: int, size: int, step: int) -> list[int]:
    """Patch starts along an axis of n voxels: every ``step``, the last flush with the end."""
    starts = list(range(0, n - size + 1, step))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts


def _torch_dataset() -> type:
    return require("torch.utils.data", "VolumeDataset").Dataset  # type: ignore[no-any-return]


class VolumeDataset(_torch_dataset()):  # type: ignore[misc]
    """Slices or 3-D patches of the series in a store, read lazily, as dict samples.

    Parameters
    ----------
    store : path or URL
        A ctvol store (cohort, reslice or upsample output).
    patch : (pz, py, px) of int, optional
        Patch size in voxels; default None: whole axial slices, ``(1, H, W)``
        per sample.
    stride : (sz, sy, sx) of int, optional
        Step between patch starts; default ``patch`` (tiles without overlap).
        The last patch along each axis is moved to end flush with the volume,
        so every voxel is in at least one patch.
    keys : sequence of str, optional
        Only these series; default every complete series.
    window : (low, high) in HU, optional
        Clip to the window and map to [0, 1] (the paper uses (-1024, 1024));
        default None: HU as float32.
    transform : callable, optional
        Applied to every sample dict (e.g. a ``monai.transforms.Compose`` of
        dictionary transforms).

    Attributes
    ----------
    items : list of (key, z0, y0, x0)
        The sample origins, in voxel indices.
    skipped : dict of str -> str
        Series left out, with the reason (smaller than ``patch``).

    Notes
    -----
    A sample holds ``"image"``: float32 ``(1, pz, py, px)`` (``(1, H, W)``
    for slices); ``"key"``: the series key; ``"z"``, ``"y"``, ``"x"``: float64
    coordinates in mm of the sample's voxels (``docs/storage.md``);
    ``"spacing"``: ``(dz, dy, dx)`` in mm; ``"index"``: the voxel index of the
    sample's first voxel; ``"generated"``: bool per slice (True for slices a
    reslice generated). ``torch.utils.data.default_collate`` batches them.

    Raises
    ------
    ValueError
        Bad ``patch`` or ``stride``, or no series large enough for the patch.
    SeriesNotFoundError
        A key in ``keys`` is not a complete series of the store.

    Examples
    --------
    >>> import numpy as np, xarray as xr, ctvol
    >>> tmp = getfixture("tmp_path")
    >>> hu = np.arange(4 * 6 * 6, dtype="int16").reshape(4, 6, 6)
    >>> ds = xr.Dataset({"hu": (("z", "y", "x"), hu)},
    ...                 coords={"z": [0.0, 2.0, 4.0, 6.0], "y": np.arange(6.0) / 2,
    ...                         "x": np.arange(6.0) / 2})
    >>> ctvol.write(ds, tmp / "c.zarr", "s1")
    's1'
    >>> patches = ctvol.VolumeDataset(tmp / "c.zarr", patch=(2, 4, 4))
    >>> len(patches), patches[0]["image"].shape, patches[0]["z"].tolist()
    (8, (1, 2, 4, 4), [0.0, 2.0])
    >>> len(ctvol.VolumeDataset(tmp / "c.zarr"))   # whole slices
    4
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        *,
        patch: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        keys: Sequence[str] | None = None,
        window: tuple[float, float] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if patch is not None:
            patch = tuple(int(p) for p in patch)
            if len(patch) != 3 or min(patch) < 1:
                raise OptionError(f"patch must be 3 positive voxel counts (pz, py, px), "
                                  f"got {patch!r}")
        if stride is not None:
            if patch is None:
                raise OptionError("stride needs patch= (whole slices are taken one by one)")
            stride = tuple(int(s) for s in stride)
            if len(stride) != 3 or min(stride) < 1:
                raise OptionError(f"stride must be 3 positive voxel counts, got {stride!r}")
        self.store = store_url(store)
        self.patch, self.stride = patch, stride or patch
        self.window, self.transform = window, transform
        self.storage_options = storage_options
        have = list_series(store, storage_options=storage_options)
        if keys is not None:
            missing = [k for k in keys if k not in have]
            if missing:
                raise SeriesNotFoundError(
                    f"no complete series {', '.join(map(repr, missing))} in {self.store}; "
                    f"complete series: {', '.join(have[:10]) or 'none'}"
                )
        self.keys = list(keys) if keys is not None else have
        self.coords: dict[str, dict[str, np.ndarray]] = {}
        self.items: list[tuple[str, int, int, int]] = []
        self.skipped: dict[str, str] = {}
        for key in self.keys:
            ds = open_series(store, key, storage_options=storage_options)
            shape = tuple(ds["hu"].shape)
            c = {d: (np.asarray(ds[d].values, dtype=np.float64) if d in ds.coords
                     else np.arange(shape[i], dtype=np.float64)) for i, d in enumerate("zyx")}
            c["generated"] = (np.asarray(ds["generated"].values, dtype=bool)
                              if "generated" in ds.coords else np.zeros(shape[0], bool))
            c["spacing"] = np.array([(v[-1] - v[0]) / (v.size - 1) if v.size > 1 else np.nan
                                     for v in (c["z"], c["y"], c["x"])])
            self.coords[key] = c
            if self.patch is None:
                self.items.extend((key, z, 0, 0) for z in range(shape[0]))
                continue
            if any(p > n for p, n in zip(self.patch, shape, strict=True)):
                self.skipped[key] = f"{shape} voxels, smaller than the patch {self.patch}"
                continue
            assert self.stride is not None
            axes = [_starts(n, p, s) for n, p, s in zip(shape, self.patch, self.stride,
                                                        strict=True)]
            self.items.extend((key, z, y, x) for z in axes[0] for y in axes[1] for x in axes[2])
        if not self.items:
            why = "; ".join(f"{k}: {v}" for k, v in self.skipped.items()) or "no series"
            raise DataError(f"no samples in {self.store} ({why}); use a smaller patch")
        self._hu = HuHandles(self.store, storage_options)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        key, z0, y0, x0 = self.items[index]
        arr = self._hu(key)
        c = self.coords[key]
        if self.patch is None:
            pz, py, px = 1, arr.shape[1], arr.shape[2]
        else:
            pz, py, px = self.patch
        hu = np.asarray(arr[z0 : z0 + pz, y0 : y0 + py, x0 : x0 + px])
        image = to_unit(hu, self.window) if self.window is not None else hu.astype(np.float32)
        if self.patch is None:
            image = image[0]
        sample = {
            "image": image[None],
            "key": key,
            "z": c["z"][z0 : z0 + pz].copy(),
            "y": c["y"][y0 : y0 + py].copy(),
            "x": c["x"][x0 : x0 + px].copy(),
            "spacing": c["spacing"].copy(),
            "index": np.array([z0, y0, x0], dtype=np.int64),
            "generated": c["generated"][z0 : z0 + pz].copy(),
        }
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        what = "slices" if self.patch is None else f"patches {self.patch}"
        return (f"VolumeDataset({self.store!r}, {len(self.keys)} series, {len(self)} "
                f"{what})")
