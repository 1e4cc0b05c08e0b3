"""ctvol.VolumeDataset: slices and patches of a store, lazy, worker-safe, dict samples."""

from __future__ import annotations

import pathlib
import pickle

import numpy as np
import pytest
import xarray as xr

import ctvol
from ctvol.errors import SeriesNotFoundError
from ctvol.testing import head_phantom


@pytest.fixture
def store(tmp_path: pathlib.Path) -> str:
    path = str(tmp_path / "c.zarr")
    for key, n, seed in (("a", 7, 0), ("b", 5, 1)):
        hu = head_phantom((n, 20, 24), seed=seed)
        ds = xr.Dataset({"hu": (("z", "y", "x"), hu)},
                        coords={"z": 10.0 + 2.0 * np.arange(n), "y": 0.5 * np.arange(20),
                                "x": -3.0 + 0.75 * np.arange(24)})
        ctvol.write(ds, path, key)
    # a reslice output beside them, with its generated flags
    fine = ctvol.reslice(ctvol.open_series(path, "b"), 2, method="linear")
    ctvol.write(fine, path, "b_x2")
    return path


def test_slices_are_the_store_with_their_coordinates(store: str) -> None:
    data = ctvol.VolumeDataset(store)
    assert len(data) == 7 + 5 + 9
    for i in (0, 8, 20):
        s = data[i]
        ds = ctvol.open_series(store, s["key"])
        z = int(s["index"][0])
        assert s["image"].shape == (1, 20, 24) and s["image"].dtype == np.float32
        np.testing.assert_array_equal(s["image"][0], ds.hu.values[z])
        assert s["z"].tolist() == [ds.z.values[z]]
        np.testing.assert_array_equal(s["x"], ds.x.values)
        np.testing.assert_allclose(s["spacing"], [2.0 if s["key"] != "b_x2" else 1.0, 0.5,
                                                  0.75])
    gen = [bool(data[i]["generated"][0]) for i in range(12, 21)]
    assert gen == [False, True] * 4 + [False]


def test_patches_tile_every_voxel_with_overlap_at_the_end(store: str) -> None:
    data = ctvol.VolumeDataset(store, patch=(3, 8, 10), keys=["a"])
    hu = ctvol.open_series(store, "a").hu.values
    seen = np.zeros(hu.shape, int)
    for s in data:
        z0, y0, x0 = s["index"]
        assert s["image"].shape == (1, 3, 8, 10)
        np.testing.assert_array_equal(s["image"][0], hu[z0:z0 + 3, y0:y0 + 8, x0:x0 + 10])
        np.testing.assert_allclose(s["y"], 0.5 * np.arange(y0, y0 + 8))
        np.testing.assert_allclose(s["x"], -3.0 + 0.75 * np.arange(x0, x0 + 10))
        seen[z0:z0 + 3, y0:y0 + 8, x0:x0 + 10] += 1
    assert seen.min() >= 1
    # starts 0, 3, then 4 (flush with the end) along z; 0, 8, 12 along y; 0, 10, 14 along x
    assert len(data) == 3 * 3 * 3
    half = ctvol.VolumeDataset(store, patch=(7, 20, 24), stride=(1, 1, 1), keys=["a", "b"])
    assert len(half) == 1 and half.skipped == {"b": "(5, 20, 24) voxels, smaller than the "
                                               "patch (7, 20, 24)"}


def test_window_maps_to_unit(store: str) -> None:
    s = ctvol.VolumeDataset(store, window=(-1024, 1024), keys=["a"])[3]
    assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"patch": (0, 4, 4)}, ValueError, r"patch must be 3 positive"),
    ({"patch": (4, 4)}, ValueError, r"patch must be 3 positive"),
    ({"stride": (1, 1, 1)}, ValueError, r"stride needs patch="),
    ({"patch": (2, 2, 2), "stride": (0, 1, 1)}, ValueError, r"stride must be 3 positive"),
    ({"patch": (50, 2, 2)}, ValueError, r"no samples .*smaller than the patch"),
    ({"keys": ["zz"]}, SeriesNotFoundError, r"no complete series 'zz' .*complete series: a"),
])
def test_bad_arguments(store: str, kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        ctvol.VolumeDataset(store, **kwargs)


def test_dataloader_workers_and_default_collate(store: str) -> None:
    """Two worker processes read the same samples as the main process; handles are
    not pickled (each worker opens its own)."""
    from torch.utils.data import DataLoader

    data = ctvol.VolumeDataset(store, patch=(2, 8, 8), keys=["a"])
    data[0]  # opens a handle in this process
    assert data._hu._arrays
    state = pickle.loads(pickle.dumps(data))
    assert state._hu._arrays == {}
    serial = [data[i]["image"] for i in range(len(data))]
    loader = DataLoader(data, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    images = np.concatenate([b["image"].numpy() for b in batches])
    np.testing.assert_array_equal(images, np.stack(serial))
    assert batches[0]["key"] == ["a"] * 4 and tuple(batches[0]["z"].shape) == (4, 2)


@pytest.mark.slow  # importing monai takes seconds
def test_monai_dictionary_transforms_accept_the_samples(store: str) -> None:
    monai = pytest.importorskip("monai")
    from monai.transforms import Compose, RandSpatialCropd, ScaleIntensityRanged

    pipeline = Compose([
        ScaleIntensityRanged(keys="image", a_min=-1024, a_max=1024, b_min=0.0, b_max=1.0,
                             clip=True),
        RandSpatialCropd(keys="image", roi_size=(2, 6, 6), random_size=False),
    ])
    data = ctvol.VolumeDataset(store, patch=(3, 8, 8), keys=["a"], transform=pipeline)
    s = data[0]
    assert tuple(s["image"].shape) == (1, 2, 6, 6)
    assert float(s["image"].min()) >= 0.0 and float(s["image"].max()) <= 1.0
    assert s["key"] == "a" and s["z"].shape == (3,)
    batch = next(iter(monai.data.DataLoader(data, batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 1, 2, 6, 6)
