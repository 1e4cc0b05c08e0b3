"""Figures of an evaluation report (matplotlib, object API: no pyplot, no backend switch).

Per factor: an example strip like the paper's Figures 8-13 (the real slices of
one pair and what each method generates between them, each panel titled with
its PSNR, SSIM, MSE), the distribution of per-slice differences U-net −
linear, and the slices where the model loses most against linear.
Only the few slices shown are read and regenerated (one pair each).
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from .._deps import require
from .._reslice import reslice
from ..metrics import METRICS, slice_metrics
from ._types import Case

if TYPE_CHECKING:
    from ._report import EvaluationReport

_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "mse": "MSE"}


def _short(key: str) -> str:
    return key if len(key) <= 24 else f"…{key[-20:]}"


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _pair(rep: EvaluationReport, case: Case, j: int) -> dict[str, np.ndarray]:
    """Real slices of pair j (k+1 of them) and each method's output for that pair."""
    k = case.factor
    out = {"real": np.asarray(case.block["hu"][j * k:(j + 1) * k + 1].values)}
    pair = case.kept.isel(z=[j, j + 1])
    for meth in rep.info["methods"]:
        model = rep._models.get(k) if meth == "unet" else None
        res = reslice(pair, k, method=meth, model=model)
        out[meth] = np.asarray(res["hu"].values)
    return out


def _title(m: np.ndarray) -> str:
    psnr = "∞" if not np.isfinite(m[0]) else f"{m[0]:.2f}"
    return f"PSNR {psnr} dB\nSSIM {m[1]:.4f}\nMSE {m[2]:.2e}"


def _show(ax: Any, img: np.ndarray, window: tuple[float, float], title: str = "") -> None:
    ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def example(rep: EvaluationReport, case: Case, path: pathlib.Path) -> None:
    k = case.factor
    n_pairs = case.kept.sizes["z"] - 1
    j = n_pairs // 2
    slices = _pair(rep, case, j)
    methods = rep.info["methods"]
    win = tuple(rep.info["window"])
    fig = _figure(1.7 * (k + 1), 1.9 * (1 + len(methods)))
    axes = fig.subplots(1 + len(methods), k + 1, squeeze=False)
    first = int(case.index[j * k])
    for col in range(k + 1):
        idx = int(case.index[j * k + col])
        role = "input" if col in (0, k) else "real (held out)"
        _show(axes[0, col], slices["real"][col], win, f"slice {idx}: {role}")
        for row, meth in enumerate(methods, start=1):
            ax = axes[row, col]
            if col in (0, k):
                ax.axis("off")
                continue
            m = slice_metrics(slices["real"][col], slices[meth][col], window=win)[0]
            _show(ax, slices[meth][col], win, f"{meth}\n{_title(m)}")
    fig.suptitle(f"{_short(case.key)}: factor {k}, pair of slices {first} and "
                 f"{first + k * case.stride} (display window {win[0]:g}..{win[1]:g} HU)",
                 fontsize=8)
    fig.savefig(path, dpi=110)


def _readable_ticks(ax: Any) -> None:
    """Few, full tick labels: whole counts on y, 3 significant digits on x and no
    shared offset such as "1e-5" in a corner (MSE differences are ~1e-5)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.tick_params(labelsize=7)


def differences(rep: EvaluationReport, k: int, stride: int, path: pathlib.Path) -> Any:
    t = rep.table
    diff = next(m for m in t.method.unique() if " - " in m)
    fig = _figure(10, 3)
    axes = fig.subplots(1, len(METRICS))
    for ax, metric in zip(axes, METRICS, strict=True):
        counts, edges = rep.figure_data[f"x{k}/hist/{metric}"]
        ax.stairs(counts, edges, fill=True, alpha=0.7)
        ax.axvline(0.0, color="k", lw=0.8)
        row = t[(t.factor == k) & (t.stride == stride) & (t.series == "all")
                & (t.convention == "generated") & (t.method == diff) & (t.metric == metric)].iloc[0]
        if row["mean"] is not None and np.isfinite(row["mean"]):
            ax.axvline(row["mean"], color="C3", lw=1.2, label=f"mean {row['mean']:.3g}")
            ax.legend(fontsize=7)
        p = "—" if row["p"] is None or not np.isfinite(row["p"]) else f"{row['p']:.2g}"
        ax.set_title(f"{_LABELS[metric]}: {diff}\nn = {int(row['n'])}, paired t-test p = {p}",
                     fontsize=8)
        ax.set_xlabel("per-slice difference", fontsize=8)
        _readable_ticks(ax)
    axes[0].set_ylabel("generated slices", fontsize=8)
    fig.suptitle(f"factor {k}: per-slice differences (positive PSNR/SSIM, negative MSE: "
                 f"{diff.split(' - ')[0]} better)", fontsize=9)
    fig.savefig(path, dpi=110)
    return fig


def worst(rep: EvaluationReport, k: int, path: pathlib.Path) -> None:
    picks = rep.figure_data[f"x{k}/worst"]
    methods = rep.info["methods"]
    win = tuple(rep.info["window"])
    cols = 1 + len(methods) + 1
    fig = _figure(2.0 * cols, 2.2 * len(picks))
    axes = fig.subplots(len(picks), cols, squeeze=False)
    main = methods[-1] if methods[-1] != "linear" or len(methods) == 1 else methods[0]
    gains: list[float] = []  # PSNR of main minus linear, per pick (dB)
    for row, (ci, g) in enumerate(picks):
        case = rep._cases[ci]
        j, r = divmod(g, case.factor)
        slices = _pair(rep, case, j)
        real = slices["real"][r]
        _show(axes[row, 0], real, win, f"{_short(case.key)}\nslice {int(case.index[g])}, "
                                       f"z {case.z[g]:.1f} mm: real")
        psnr = {}
        for c, meth in enumerate(methods, start=1):
            m = slice_metrics(real, slices[meth][r], window=win)[0]
            psnr[meth] = float(m[0])
            _show(axes[row, c], slices[meth][r], win, f"{meth}\n{_title(m)}")
        if "linear" in psnr and main != "linear":
            gains.append(psnr[main] - psnr["linear"])
        err = np.abs(slices[main][r].astype(np.float32) - real.astype(np.float32))
        ax = axes[row, -1]
        im = ax.imshow(err, cmap="magma", vmin=0, vmax=max(float(np.percentile(err, 99.5)), 1.0))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"|{main} − real| (HU)", fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"factor {k}: {worst_title(len(picks), main, gains)}", fontsize=9)
    fig.savefig(path, dpi=110)


def worst_title(n: int, main: str, gains: list[float]) -> str:
    """What the "worst slices" figure shows: losses only when every pick is one."""
    finite = [g for g in gains if np.isfinite(g)]
    if not gains:
        return f"the {n} generated slices with the lowest PSNR"
    losses = sum(g < 0 for g in finite)
    if finite and losses == len(gains):
        return f"the {n} generated slices where {main} loses most PSNR against linear"
    span = (f"; gain {min(finite):+.2f} to {max(finite):+.2f} dB" if finite else "")
    return (f"the {n} generated slices where {main} gains least PSNR over linear "
            f"({losses} of them losses{span})")


def draw_all(rep: EvaluationReport, folder: pathlib.Path) -> list[str]:
    """Draw every figure into ``folder``; return their paths relative to its parent."""
    require("matplotlib", "the evaluation report figures (figures=False skips them)")
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for k in rep.info["factors"]:
        stride = rep.figure_data.get(f"x{k}/stride")
        if stride is None:  # every series was skipped for this factor
            continue
        case = next(c for c in rep._cases if c.factor == k and c.stride == stride)
        names = [f"example_x{k}.png"]
        if f"x{k}/hist/psnr" in rep.figure_data:
            names.append(f"differences_x{k}.png")
        names.append(f"worst_x{k}.png")
        for name in names:
            path = folder / name
            if name.startswith("example"):
                example(rep, case, path)
            elif name.startswith("differences"):
                differences(rep, k, stride, path)
            else:
                worst(rep, k, path)
            made.append(f"{folder.name}/{name}")
    return made
