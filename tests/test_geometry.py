"""Slice order, measured spacing, gaps, duplicates and tilt from positions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctvol.geometry import plan_stack, slice_normal

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# The real Philips STEREOTAXIS series (../shared/data, S21610/S2010).
PHILIPS_TILTED = (1.0, 0.0, 0.0, 0.0, 0.9483237, -0.3173047)


def _stack(n: int, dz: float, z0: float = 0.0, normal: np.ndarray | None = None) -> np.ndarray:
    normal = np.array([0.0, 0.0, 1.0]) if normal is None else normal
    return np.array([-100.0, -50.0, z0]) + np.outer(np.arange(n) * dz, normal)


def test_normal_of_axial_and_tilted() -> None:
    np.testing.assert_allclose(slice_normal(AXIAL), [0, 0, 1])
    n = slice_normal(PHILIPS_TILTED)
    np.testing.assert_allclose(np.linalg.norm(n), 1.0)
    np.testing.assert_allclose(n, [0, 0.3173047, 0.9483237], atol=1e-6)
    with pytest.raises(ValueError, match="parallel or zero"):
        slice_normal((1, 0, 0, 1, 0, 0))


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(2, 60),
    dz=st.floats(0.3, 10.0),
    z0=st.floats(-2000, 2000),
    seed=st.integers(0, 2**31 - 1),
)
def test_order_comes_from_positions_not_input_order(n: int, dz: float, z0: float,
                                                    seed: int) -> None:
    pos = _stack(n, dz, z0)
    perm = np.random.default_rng(seed).permutation(n)
    geo = plan_stack(pos[perm], AXIAL)
    np.testing.assert_array_equal(perm[geo.order], np.arange(n))
    assert len(geo.runs) == 1 and len(geo.runs[0]) == n
    assert geo.gaps == [] and geo.duplicates == [] and geo.tilt_deg == 0.0
    np.testing.assert_allclose(np.diff(geo.z), dz, rtol=1e-9, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(5, 40), missing=st.data(), dz=st.floats(0.5, 5.0))
def test_a_missing_slice_splits_into_two_runs(n: int, missing: st.DataObject,
                                              dz: float) -> None:
    k = missing.draw(st.integers(1, n - 2))
    pos = np.delete(_stack(n, dz), k, axis=0)
    geo = plan_stack(pos, AXIAL)
    assert [len(r) for r in geo.runs] == [k, n - 1 - k]
    (gap,) = geo.gaps
    assert gap["step"] == pytest.approx(2 * dz) and gap["expected"] == pytest.approx(dz)


def test_duplicates_reported_and_kept_once() -> None:
    pos = _stack(5, 2.0)
    pos = np.concatenate([pos, pos[[2]]])
    geo = plan_stack(pos, AXIAL)
    assert geo.duplicates == [(2, 3)]
    assert [len(r) for r in geo.runs] == [5]
    assert geo.gaps == []


def test_jitter_within_tolerance_is_not_a_gap() -> None:
    pos = _stack(10, 1.0)
    pos[:, 2] += np.random.default_rng(0).uniform(-0.003, 0.003, 10)
    assert len(plan_stack(pos, AXIAL).runs) == 1


def test_philips_gantry_tilt_measured_with_sign_and_true_spacing() -> None:
    # Positions advance 2.5 mm along patient z, the slices are tilted -18.5 deg.
    pos = _stack(54, 2.5)
    geo = plan_stack(pos, PHILIPS_TILTED)
    assert geo.tilt_deg == pytest.approx(-18.5, abs=0.01)
    assert np.diff(geo.z).mean() == pytest.approx(2.371, abs=5e-4)
    assert len(geo.runs) == 1


def test_small_angles_are_not_tilt() -> None:
    normal = np.array([0.0, np.sin(np.radians(0.2)), np.cos(np.radians(0.2))])
    assert plan_stack(_stack(5, 1.0, normal=np.array([0, 0, 1.0])), AXIAL).tilt_deg == 0.0
    pos = _stack(5, 1.0) + np.outer(np.arange(5), normal - [0, 0, 1])
    assert plan_stack(pos, AXIAL).tilt_deg == 0.0
