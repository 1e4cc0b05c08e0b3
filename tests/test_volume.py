"""ctvol._volume: the data model's shared checks (spacing from coordinates first,
derived attrs, factor and volume checks)."""

from __future__ import annotations

import json
import pathlib

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
from ctvol.errors import GeometryError, OptionError, VolumeError
from ctvol.geometry import SPACING_ATOL_MM, SPACING_RTOL, plan_stack, step_tolerance
from ctvol.io import _grid


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
    assert uneven_step(np.arange(5.0)) == (1.0, None)
    assert uneven_step(np.array([0.0, 1.0, 2.0, 4.0])) == (1.0, 2)
    assert uneven_step(np.array([3.0, 2.0, 1.0]))[1] == 0
    assert uneven_step(np.array([3.0, 2.0, 1.0]), increasing=False) == (-1.0, None)
    assert uneven_step(np.zeros(3), increasing=False)[1] == 0


# (typical step, deviation of one step, even?): 1 % of the step, or 0.005 mm where
# that is more (sub-millimetre slices), decides; geometry.step_tolerance.
BOUNDARY = [
    (2.5, 0.0249, True), (2.5, 0.0251, False), (2.5, -0.0249, True), (2.5, -0.0251, False),
    (1.0, 0.0099, True), (1.0, 0.0101, False),
    (0.3, 0.0049, True), (0.3, 0.0051, False),  # 1 % = 0.003 mm: the 0.005 mm floor
    (0.6255, 0.001, True),  # positions written to 1e-3 mm (0.16 %)
]


@pytest.mark.parametrize(("step", "off", "even"), BOUNDARY)
def test_one_spacing_tolerance_for_ingest_reslice_refine_and_export(
        step: float, off: float, even: bool) -> None:
    """Ingest's gap split, the even-grid check of reslice and shift-and-interleave, and
    export's regular grid agree at the tolerance's edge."""
    assert (SPACING_RTOL, SPACING_ATOL_MM) == (0.01, 0.005)
    assert step_tolerance(step) == max(0.005, 0.01 * step)
    steps = np.full(6, step)
    steps[3] += off
    z = np.concatenate([[10.0], 10.0 + np.cumsum(steps)])
    assert (uneven_step(z)[1] is None) is even                      # reslice
    assert (uneven_step(-z, increasing=False)[1] is None) is even   # shift-and-interleave
    stack = plan_stack(np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=1),
                       (1, 0, 0, 0, 1, 0))
    assert (len(stack.runs) == 1) is even                            # ingest: no gap
    ds = xr.Dataset({"hu": (("z", "y", "x"), np.zeros((z.size, 2, 2), np.int16))},
                    coords={"z": z, "y": [0.0, 0.5], "x": [0.0, 0.5]})
    if even:                                                         # export
        assert _grid.spacing(ds)[0] == pytest.approx(step, abs=0.01)
    else:
        with pytest.raises(GeometryError, match="not evenly increasing"):
            _grid.spacing(ds)


def test_a_series_ingest_keeps_is_one_reslice_and_export_accept(
        tmp_path: pathlib.Path) -> None:
    """Positions written to 1e-3 mm (DS strings) make a 0.6255 mm series' steps 0.625
    and 0.626 mm: ingest keeps one series, so reslice must not refuse it (it did with
    its own 0.1 % tolerance, telling the user to split what ingest had not split)."""
    pydicom = pytest.importorskip("pydicom")
    import ctvol
    from ctvol.testing import head_phantom, write_dicom_series

    files = write_dicom_series(tmp_path / "in", head_phantom((8, 16, 16), seed=0),
                               spacing=(0.6255, 0.5, 0.5), shuffle_names=False)
    for f in files:
        d = pydicom.dcmread(f)
        d.ImagePositionPatient = [f"{float(v):.3f}" for v in d.ImagePositionPatient]
        d.save_as(f)
    report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    (key,) = report.written
    ds = ctvol.open_series(report.store, key)
    assert set(np.round(np.diff(ds.z.values), 6)) == {0.625, 0.626}
    fine = ctvol.reslice(ds, 3, method="linear")
    np.testing.assert_array_equal(fine.hu.values[::3], ds.hu.values)
    assert _grid.spacing(fine)[0] == pytest.approx(0.6255 / 3, rel=1e-3)


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
    path = pathlib.Path("models") / "unet-x3"
    assert history_record("reslice", {"model": path})["params"] == {"model": str(path)}


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
