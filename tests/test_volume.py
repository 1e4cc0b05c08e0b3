"""ctvol._volume: the data model's shared checks (spacing from coordinates first,
derived attrs, factor and volume checks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from ctvol._version import __version__
from ctvol._volume import (
    axis_spacing,
    check_factor,
    check_volume,
    derive_attrs,
    history_record,
    history_text,
    uneven_step,
)
from ctvol.curation._classify import pixel_mm
from ctvol.errors import OptionError, VolumeError


def _ds(nz: int, attrs_spacing: list[float] | None) -> xr.Dataset:
    attrs = {} if attrs_spacing is None else {"spacing": attrs_spacing}
    return xr.Dataset({"hu": (("z", "y", "x"), np.zeros((nz, 4, 5), np.int16))},
                      coords={"z": 2.5 * np.arange(nz), "y": 0.7 * np.arange(4),
                              "x": -0.6 * np.arange(5)}, attrs=attrs)


def test_spacing_comes_from_coordinates_before_attrs() -> None:
    ds = _ds(3, [9.0, 9.0, 9.0])  # attrs that disagree with the coordinates
    assert axis_spacing(ds, "z") == pytest.approx(2.5)
    assert axis_spacing(ds, "y") == pytest.approx(0.7)
    assert axis_spacing(ds, "x") == pytest.approx(-0.6)  # signed: a decreasing axis
    assert pixel_mm(ds) == pytest.approx((0.7, 0.6))      # the classifier: coordinates too
    one = _ds(1, [3.0, 0.7, 0.6])
    assert axis_spacing(one, "z") == 3.0                  # one slice: attrs
    assert np.isnan(axis_spacing(_ds(1, None), "z"))      # neither


def test_uneven_step_names_the_worst_step() -> None:
    assert uneven_step(np.arange(5.0), rtol=1e-3, atol=1e-6) == (1.0, None)
    assert uneven_step(np.array([0.0, 1.0, 2.0, 4.0]), rtol=1e-3, atol=1e-6) == (1.0, 2)
    assert uneven_step(np.array([3.0, 2.0, 1.0]), rtol=1e-3, atol=0.0)[1] == 0
    assert uneven_step(np.array([3.0, 2.0, 1.0]), rtol=1e-3, atol=0.0,
                       increasing=False) == (-1.0, None)


def test_derived_attrs_drop_the_store_flags_and_extend_the_history() -> None:
    src = {"complete": True, "sop_digest": "abc", "spacing": [1.0, 0.5, 0.5],
           "ctvol_history": ["ingest"]}
    out = derive_attrs(src, "reslice", {"factor": 3})
    record = {"op": "reslice", "params": {"factor": 3}, "version": __version__}
    assert out == {"spacing": [1.0, 0.5, 0.5], "ctvol_history": ["ingest", record]}
    assert src["ctvol_history"] == ["ingest"]  # the source is not changed


def test_history_records_are_json_and_render_like_the_old_strings() -> None:
    r = history_record("shift_interleave", {"factor": (np.int64(5),), "fuse": "mean",
                                            "order": np.int32(1), "extend": np.bool_(False),
                                            "z0": np.float32(0.5)})
    assert r == {"op": "shift_interleave", "version": __version__,
                 "params": {"factor": [5], "fuse": "mean", "order": 1, "extend": False,
                            "z0": 0.5}}
    assert json.loads(json.dumps(r)) == r  # zarr attrs store it unchanged
    assert history_text(r) == (f"ctvol {__version__} shift_interleave(factor=[5], "
                               "fuse='mean', order=1, extend=False, z0=0.5)")
    assert history_text(history_record("ingest")) == f"ctvol {__version__} ingest()"
    old = "ctvol 0.1 reslice(factor=3, keep_every=1, method='linear')"  # an older store's
    assert history_text(old) == old
    with pytest.raises(TypeError, match="JSON-serialisable, got object"):
        history_record("reslice", {"model": object()})


def test_factor_and_volume_checks_name_the_problem() -> None:
    assert check_factor(np.int64(4)) == 4
    for bad in (1, 2.0, True, "3"):
        with pytest.raises(OptionError, match="factor must be an integer >= 2"):
            check_factor(bad)
    with pytest.raises(VolumeError, match=r"'hu' with dims \('z', 'y', 'x'\)"):
        check_volume(_ds(2, None).rename({"z": "t"}))
    with pytest.raises(VolumeError, match="no slices"):
        check_volume(_ds(0, None), min_slices=1)
    check_volume(_ds(0, None))  # no minimum asked
