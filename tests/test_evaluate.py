"""ctvol.evaluate: protocol, aggregations vs numpy/scipy, conventions, report, errors."""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

import ctvol
from ctvol.evaluation import paired_t
from ctvol.intensity import to_unit
from ctvol.testing import head_phantom, tiny_model


def _volume(n: int = 13, dz: float = 1.0, shape: tuple[int, int] = (24, 20), chunks: int = 4,
            uid: str = "1.2.3", seed: int = 0) -> xr.Dataset:
    hu = head_phantom((n, *shape), seed=seed)
    return xr.Dataset(
        {"hu": (("z", "y", "x"), hu)}, coords={"z": 10.0 + dz * np.arange(n)},
        attrs={"series_uid": uid, "spacing": [dz, 0.5, 0.5]},
    ).chunk({"z": chunks})


def _rows(rep: ctvol.evaluation.EvaluationReport, **sel: object) -> object:
    t = rep.table
    for k, v in sel.items():
        t = t[t[k] == v]
    return t.set_index("metric")


def _independent_linear(hu: np.ndarray, k: int) -> np.ndarray:
    """Per generated slice (PSNR, SSIM, MSE) by scipy's interp1d along z and scikit-image."""
    from scipy.interpolate import interp1d

    m = (hu.shape[0] - 1) // k * k + 1
    hu = hu[:m]
    kept = np.arange(0, m, k)
    along_z = interp1d(kept, hu[kept].astype(np.float64), axis=0)
    rows = []
    for i in range(m):
        if i % k == 0:
            continue
        pred = np.round(along_z(i)).astype(np.int16)
        t, p = to_unit(hu[i]).astype(np.float64), to_unit(pred).astype(np.float64)
        rows.append((peak_signal_noise_ratio(t, p, data_range=1.0),
                     structural_similarity(t, p, data_range=1.0), mean_squared_error(t, p)))
    return np.array(rows)


@pytest.mark.parametrize("k", [3, 4])
def test_linear_protocol_matches_independent_computation(k: int) -> None:
    ds = _volume(n=14)
    rep = ctvol.evaluate(ds, k, methods="linear")
    ref = _independent_linear(ds.hu.values, k)
    r = _rows(rep, factor=k, convention="generated", series="all", method="linear")
    assert r.loc["psnr", "n"] == ref.shape[0] == (14 - 1) // k * (k - 1)
    for j, metric in enumerate(("psnr", "ssim", "mse")):
        assert r.loc[metric, "mean"] == pytest.approx(ref[:, j].mean(), abs=1e-6)
        assert r.loc[metric, "sd"] == pytest.approx(ref[:, j].std(ddof=1), abs=1e-6)


def test_aggregations_equal_numpy_and_ttest_equals_scipy() -> None:
    a, b = _volume(n=13, uid="1.2.3"), _volume(n=10, uid="1.2.4", seed=5)
    rep_a = ctvol.evaluate(a, 3, model=tiny_model(3, seed=1))
    per = rep_a.per_slice
    assert hasattr(per.psnr.data, "dask"), "per-slice metrics stay dask-backed"
    gen = per.generated.values
    for mi, meth in enumerate(per.algorithm.values):
        for metric in ("psnr", "ssim", "mse"):
            x = per[metric].values[gen, mi]
            r = _rows(rep_a, convention="generated", series="all", method=meth).loc[metric]
            assert r["n"] == x.size
            assert r["mean"] == pytest.approx(x.mean(), rel=1e-12)
            assert r["sd"] == pytest.approx(x.std(ddof=1), rel=1e-9)
            assert (r["min"], r["max"]) == (x.min(), x.max())
            h = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
            assert r["ci_low"] == pytest.approx(x.mean() - h, rel=1e-9)
    for metric in ("psnr", "ssim", "mse"):
        u = per[metric].sel(algorithm="unet").values[gen]
        li = per[metric].sel(algorithm="linear").values[gen]
        ref = stats.ttest_rel(u, li)
        r = _rows(rep_a, convention="generated", series="all", method="unet - linear").loc[metric]
        assert r["t"] == pytest.approx(ref.statistic, rel=1e-9)
        assert r["p"] == pytest.approx(ref.pvalue, rel=1e-6)
        assert r["mean"] == pytest.approx((u - li).mean(), rel=1e-9, abs=1e-15)
    # two series: the cohort row pools both series' slices
    store_like = [a, b]
    reps = [ctvol.evaluate(d, 3, methods="linear") for d in store_like]
    pooled = np.concatenate([r.per_slice.psnr.values[r.per_slice.generated.values, 0]
                             for r in reps])
    assert pooled.size == sum(int(_rows(r, series="all", convention="generated",
                                        method="linear").loc["psnr", "n"]) for r in reps)


def test_cohort_store_per_series_and_cohort_rows(tmp_path: pathlib.Path) -> None:
    store = str(tmp_path / "c.zarr")
    for uid, n in (("1.2.3", 13), ("1.2.4", 10), ("1.2.5", 3)):
        ctvol.write(_volume(n=n, uid=uid), store, uid)
    rep = ctvol.evaluate(store, [3, 4], methods="linear")
    per = rep.per_slice
    for k in (3, 4):
        sel = (per.factor.values == k) & per.generated.values
        cohort = _rows(rep, factor=k, convention="generated", series="all").loc["mse"]
        assert cohort["n"] == sel.sum()
        assert cohort["mean"] == pytest.approx(per.mse.values[sel, 0].mean(), rel=1e-12)
        for uid in ("1.2.3", "1.2.4"):
            s = sel & (per.series.values == uid)
            row = _rows(rep, factor=k, convention="generated", series=uid).loc["mse"]
            assert row["mean"] == pytest.approx(per.mse.values[s, 0].mean(), rel=1e-12)
    skipped = {(d["series"], d["factor"]) for d in rep.info["data"]["skipped"]}
    assert skipped == {("1.2.5", 3), ("1.2.5", 4)}
    assert all("too short" in d["reason"] for d in rep.info["data"]["skipped"])
    # whole-volume convention: per series, from all compared slices, kept ones included
    vol = _rows(rep, factor=3, convention="volume", series="1.2.3")
    s = (per.factor.values == 3) & (per.series.values == "1.2.3")
    vmse = per.mse.values[s, 0].mean()
    assert vol.loc["mse", "mean"] == pytest.approx(vmse, rel=1e-12)
    assert vol.loc["psnr", "mean"] == pytest.approx(10 * np.log10(1 / vmse), rel=1e-12)
    assert vol.loc["ssim", "mean"] == pytest.approx(per.ssim.values[s, 0].mean(), rel=1e-12)
    kept = s & ~per.generated.values
    assert np.all(per.mse.values[kept, 0] == 0) and np.all(per.ssim.values[kept, 0] == 1)


def test_doubled_stride_and_slice_selection() -> None:
    ds = _volume(n=20)
    rep = ctvol.evaluate(ds, 3, methods="linear", strides=(1, 2), series=slice(2, 17))
    per = rep.per_slice
    one = per.stride.values == 1
    two = per.stride.values == 2
    # 15 slices from index 2: stride 1 compares 13 (2..14), stride 2 compares 7 (2, 4, ... 14)
    assert per.index.values[one].tolist() == list(range(2, 15))
    assert per.index.values[two].tolist() == list(range(2, 15, 2))
    r2 = _rows(rep, stride=2, convention="generated", series="all", method="linear")
    assert r2.loc["psnr", "n"] == 4
    r1 = _rows(rep, stride=1, convention="generated", series="all", method="linear")
    assert r1.loc["psnr", "mean"] > r2.loc["psnr", "mean"]  # twice the gap is harder


def test_exactly_linear_volume_gives_mse_zero_and_no_nan(tmp_path: pathlib.Path) -> None:
    ramp = (np.arange(10)[:, None, None] * 30 + np.zeros((1, 16, 16))).astype(np.int16)
    ds = xr.Dataset({"hu": (("z", "y", "x"), ramp)}, coords={"z": np.arange(10.0)},
                    attrs={"series_uid": "ramp"}).chunk({"z": 4})
    rep = ctvol.evaluate(ds, 3, methods="linear")
    r = _rows(rep, convention="generated", series="all", method="linear")
    assert r.loc["mse", "mean"] == 0 and r.loc["ssim", "mean"] == 1
    assert r.loc["psnr", "n"] == 0 and r.loc["psnr", "n_exact"] == 6
    out = rep.save(tmp_path / "rep")
    text = (out / "report.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in report.json"))
    assert doc["table"][0]["metric"] == "psnr"
    md = (out / "report.md").read_text()
    assert "nan" not in md.lower() and "∞ (all exact)" in md
    assert "6 slices reproduced exactly" in md


def test_report_files(tmp_path: pathlib.Path) -> None:
    rep = ctvol.evaluate(_volume(n=13, shape=(32, 32)), [3, 4], model={3: tiny_model(3),
                                                                       4: tiny_model(4)})
    out = rep.save(tmp_path / "report")
    doc = json.loads((out / "report.json").read_text())
    assert doc["factors"] == [3, 4] and doc["methods"] == ["linear", "unet", "auto"]
    runs = doc["data"]["evaluated"][0]["runs"]
    # x3: 5 kept slices, one self-check pair (0, 3) scores 2; x4: 4 kept, too short
    assert runs[0]["auto"]["slices"] == 2 and runs[0]["auto"]["method"] in ("unet", "linear")
    assert "too short for the self-check" in runs[1]["auto"]["reason"]
    assert set(doc["models"]) == {"3", "4"}
    assert doc["models"]["3"]["digest"] == tiny_model(3).digest
    assert {"numpy", "dask", "scikit-image", "torch"} <= set(doc["versions"])
    assert len(doc["table"]) == len(rep.table)
    md = (out / "report.md").read_text()
    for needle in ("| PSNR (dB) |", "| SSIM |", "| MSE |", "x3 linear", "x4 unet",
                   "x3 paired t-test p (unet - linear)", "Whole volume",
                   "_paired t-test p: the two-sided p-value of a paired t-test",
                   'Nishimoto et al., 2024, "Generating intermediate slices with U-nets in '
                   'craniofacial CT images", preprint'):
        assert needle in md
    figs = sorted(p.name for p in (out / "figures").iterdir())
    assert figs == ["differences_x3.png", "differences_x4.png", "example_x3.png",
                    "example_x4.png", "worst_x3.png", "worst_x4.png"]
    for f in figs:
        assert (out / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wide = rep.summary()
    assert list(wide.index) == ["psnr", "ssim", "mse"]
    assert ("x3", "unet") in wide.columns
    assert ("x4", "paired t-test p (unet - linear)") in wide.columns


def test_worst_slices_are_the_largest_losses() -> None:
    rep = ctvol.evaluate(_volume(n=16), 3, model=tiny_model(3, seed=2))
    per = rep.per_slice
    gen = per.generated.values
    d = per.psnr.values[gen, 1] - per.psnr.values[gen, 0]
    want = np.sort(d)[:4]
    got = [per.psnr.values[:, 1][g] - per.psnr.values[:, 0][g]
           for _, g in rep.figure_data["x3/worst"]]
    np.testing.assert_allclose(sorted(got), want)


def test_series_are_evaluated_in_windows_with_the_same_numbers(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of at most SERIES_WINDOW series, each built only when at most one
    other is in flight; the report is bit-identical to a single window's."""
    import ctvol._compute
    import ctvol.evaluation._evaluate
    import ctvol.evaluation._report

    store = str(tmp_path / "c.zarr")
    for i, n in enumerate((13, 10, 3, 12, 11)):  # 1.2.2 is too short: skipped in its window
        ctvol.write(_volume(n=n, uid=f"1.2.{i}", seed=i), store, f"1.2.{i}")
    one = ctvol.evaluate(store, [3, 4], methods="linear", strides=(1, 2))

    events: list[tuple[str, object]] = []
    build, bounded = ctvol.evaluation._report.window_results, ctvol._compute.compute_bounded

    def window_results(cases: list, methods: object) -> object:
        events.append(("built", sorted({c.key for c in cases})))
        return build(cases, methods)

    def compute_bounded(items: object, **kw: object) -> object:
        for i, result in bounded(items, **kw):
            events.append(("done", i))
            yield i, result

    monkeypatch.setattr(ctvol.evaluation._evaluate, "SERIES_WINDOW", 2)
    monkeypatch.setattr(ctvol.evaluation._report, "window_results", window_results)
    monkeypatch.setattr(ctvol._compute, "compute_bounded", compute_bounded)
    rep = ctvol.evaluate(store, [3, 4], methods="linear", strides=(1, 2))
    assert [e[1] for e in events if e[0] == "built"] == [["1.2.0", "1.2.1"],
                                                         ["1.2.3"], ["1.2.4"]]
    in_flight = 0
    for kind, _ in events:
        in_flight += 1 if kind == "built" else -1
        assert in_flight <= 2
    pd.testing.assert_frame_equal(rep.table, one.table, check_exact=True)
    for name in ("psnr", "ssim", "mse", "index", "z", "series", "factor", "stride"):
        np.testing.assert_array_equal(rep.per_slice[name].values, one.per_slice[name].values)
    assert rep.info["data"] == one.info["data"]
    assert rep.figure_data["x3/worst"] == one.figure_data["x3/worst"]


def test_paired_t_equals_scipy_and_undefined_cases() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50) + 0.2
    d = a - b
    t, p = paired_t(d.size, d.mean(), d.std(ddof=1))
    ref = stats.ttest_rel(a, b)
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert paired_t(1, 0.3, 0.0) == (None, None)
    assert paired_t(5, 0.3, 0.0) == (None, None)


def test_distributed_client_gives_the_same_table() -> None:
    from distributed import Client, LocalCluster

    ds = _volume(n=13)
    ref = ctvol.evaluate(ds, 3, methods="linear").table
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                       dashboard_address=":0") as cluster, Client(cluster)):
        rep = ctvol.evaluate(ds, 3, methods="linear")
        assert type(rep.per_slice.psnr.data).__name__ == "Array"
        got = rep.table
    num = ["n", "n_exact", "mean", "sd", "min", "max"]
    np.testing.assert_allclose(got[num].astype(float), ref[num].astype(float), rtol=1e-12)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"methods": ("linear", "cubic")}, ValueError,
     r"valid methods are \['linear', 'unet', 'auto'\]"),
    ({"factor": 1}, ValueError, "factors must be integers >= 2"),
    ({"strides": 0}, ValueError, "strides must be integers >= 1"),
    ({"factor": 4, "model": "unet-x5"}, ValueError, "no model for factor 4"),
    ({"factor": 7, "methods": ("linear", "unet")}, FileNotFoundError,
     "no bundled U-net for factor 7"),
])
def test_errors(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        ctvol.evaluate(_volume(), **kwargs)


def test_nothing_evaluable_names_the_reasons() -> None:
    with pytest.raises(ValueError, match=r"no series could be evaluated: 1\.2\.3 x5: too short"):
        ctvol.evaluate(_volume(n=4), 5, methods="linear")


def test_uneven_series_is_skipped_with_reason(tmp_path: pathlib.Path) -> None:
    store = str(tmp_path / "c.zarr")
    ctvol.write(_volume(n=10, uid="ok"), store, "ok")
    bad = _volume(n=10, uid="gap")
    bad = bad.assign_coords(z=np.r_[np.arange(5.0), np.arange(6.0, 11.0)])
    ctvol.write(bad, store, "gap")
    rep = ctvol.evaluate(store, 3, methods="linear")
    (skip,) = rep.info["data"]["skipped"]
    assert skip["series"] == "gap" and "uneven slice spacing" in skip["reason"]
    assert set(rep.table.series) == {"ok", "all"}


def test_unknown_series_key_is_named(sample_store: str) -> None:
    with pytest.raises(KeyError, match="no complete series 'nope'"):
        ctvol.evaluate(sample_store, 3, methods="linear", series=["nope"])


def test_real_sample_linear_baseline(sample_store: str) -> None:
    (key,) = ctvol.list_series(sample_store)
    rep = ctvol.evaluate(sample_store, 3, methods="linear")
    hu = ctvol.open_series(sample_store, key).hu.values
    ref = _independent_linear(hu, 3)
    r = _rows(rep, convention="generated", series="all", method="linear")
    assert r.loc["psnr", "mean"] == pytest.approx(ref[:, 0].mean(), abs=1e-6)
    assert r.loc["ssim", "mean"] == pytest.approx(ref[:, 1].mean(), abs=1e-6)


def test_cli_evaluate(sample_store: str, tmp_path: pathlib.Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    from ctvol.cli import main

    (key,) = ctvol.list_series(sample_store)
    out = tmp_path / "rep"
    assert main(["evaluate", sample_store, "--factor", "3", "4", "--method", "linear",
                 "--series", f"{key}:2:20", "-o", str(out), "--scheduler", "threads", "-q",
                 "--no-figures"]) == 0
    text = capsys.readouterr().out
    assert "x3" in text and "x4" in text and "report written to" in text
    doc = json.loads((out / "report.json").read_text())
    runs = doc["data"]["evaluated"][0]["runs"]
    assert doc["data"]["evaluated"][0]["first_index"] == 2
    assert [r["index_range"] for r in runs] == [[2, 17], [2, 18]]
    # a factor longer than the selected range: skipped with its reason, exit code 3
    assert main(["evaluate", sample_store, "--factor", "3", "5", "--method", "linear",
                 "--series", f"{key}:0:5", "-o", str(out), "--scheduler", "threads", "-q",
                 "--no-figures"]) == 3
    assert "x5 stride 1: too short" in capsys.readouterr().err
    assert main(["evaluate", sample_store, "--factor", "5", "--method", "linear",
                 "--series", f"{key}:0:3", "-o", str(out), "--scheduler", "threads",
                 "-q"]) == 1
    assert "no series could be evaluated" in capsys.readouterr().err


def test_warns_when_evaluating_on_training_slices(tmp_path: pathlib.Path) -> None:
    from ctvol.errors import EvaluationWarning

    model = tiny_model(3)
    model.provenance["training_slices"] = {"1.2.3": {"index": [0, 6], "z_mm": [10.0, 16.0]}}
    ds = _volume(n=13)  # z = 10 .. 22 mm
    with pytest.warns(EvaluationWarning, match=r"7 of the 13 slices evaluated \(indices 0-6\) "
                                               r"lie in z 10-16 mm, which trained"):
        rep = ctvol.evaluate(ds, 3, model=model)
    assert len(rep.info["warnings"]) == 1
    assert "## Warnings" in rep.to_markdown()
    clean = ctvol.evaluate(ds, 3, model=model, series=slice(7, None))  # held out: no warning
    assert clean.info["warnings"] == []
    # the bundled models say which slices of the real series they were trained on
    phantom = "1.3.46.670589.33.1.3963937485511329090.25659488233390035616"
    for name in ("unet-x4", "unet-x5"):
        prov = ctvol.load_model(name).provenance
        assert [r["index"] for r in prov["training_slices"][phantom]] == [[0, 43]]
        assert [r["index"] for r in prov["selection_slices"][phantom]] == [[96, 139]]
        assert prov["test_slices"][phantom] == [{"index": [55, 84], "z_mm": [749.21, 778.21]}]


def test_the_demo_sample_is_held_out_from_every_bundled_model(sample_store: str) -> None:
    """The bundled sample (make demo's data) is slices 55-84 of S2020, z 749-778 mm: the
    phantom's test block, which no bundled model trained on or was selected on."""
    from ctvol.errors import EvaluationWarning
    from ctvol.models import bundled_models

    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        rep = ctvol.evaluate(sample_store, sorted(bundled_models().values()),
                             methods=("linear", "unet"))
    assert rep.info["warnings"] == []
    # a model that did train on part of it is flagged, by z, not by index
    model = tiny_model(4)
    model.provenance["training_slices"] = {
        "1.3.46.670589.33.1.3963937485511329090.25659488233390035616": [
            {"index": [50, 60], "z_mm": [744.21, 754.21]}]}
    with pytest.warns(EvaluationWarning, match=r"of the 29 slices evaluated \(indices 0-5\) "
                                               r"lie in z 744.21-754.21"):
        ctvol.evaluate(sample_store, 4, model=model, methods=("linear", "unet"))


@pytest.mark.parametrize(("gains", "title"), [
    ([-1.0, -0.5], "the 2 generated slices where unet loses most PSNR against linear"),
    ([-1.0, 0.25], "the 2 generated slices where unet gains least PSNR over linear (1 of them "
                   "losses; gain -1.00 to +0.25 dB)"),
    ([0.5, 0.75], "gains least PSNR over linear (0 of them losses; gain +0.50 to +0.75 dB)"),
    ([], "the 2 generated slices with the lowest PSNR"),
])
def test_worst_figure_is_titled_for_what_it_shows(gains: list[float], title: str) -> None:
    from ctvol.evaluation._figures import worst_title

    assert title in worst_title(2, "unet", gains)


def test_difference_histograms_have_whole_tick_labels(tmp_path: pathlib.Path) -> None:
    from ctvol.evaluation._figures import differences

    rep = ctvol.evaluate(_volume(n=13, shape=(32, 32)), 3, model={3: tiny_model(3)})
    axes = differences(rep, 3, 1, tmp_path / "d.png").axes
    assert len(axes) == 3
    for ax in axes:
        ax.figure.canvas.draw()
        assert ax.xaxis.get_offset_text().get_text() == ""  # no "1e-5" in a corner
        ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert all(float(t.replace("−", "-")).is_integer() for t in ticks)


def test_default_methods_leave_out_unet_for_a_factor_without_a_model() -> None:
    rep = ctvol.evaluate(_volume(n=13, shape=(32, 32)), 7)  # no bundled x7 U-net
    assert rep.info["methods"] == ["linear", "auto"]
    run = rep.info["data"]["evaluated"][0]["runs"][0]
    assert run["auto"]["method"] == "linear"
    assert "too short" in run["auto"]["reason"] or run["auto"]["reason"] == \
        "no U-net for factor 7"
