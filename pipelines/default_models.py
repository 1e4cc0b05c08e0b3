# ruff: noqa: E501  (the model card template has long table rows)
"""The bundled reslice U-nets (issue 13): ingest, train, choose, test — reproducibly.

The three real series of ``../shared/data`` (a head phantom, a chest and a
skull-to-thigh patient; three scanners and kernels) are ingested into one
store and split into contiguous z-blocks by ``default_models.json``: ``train``
blocks feed training, ``val`` blocks choose the epoch (highest validation
PSNR), ``test`` blocks choose nothing and give the model cards' figures.

    python pipelines/default_models.py ingest WORK            # WORK/train.zarr
    python pipelines/default_models.py train WORK 3           # WORK/x3_l1 (resumable)
    python pipelines/default_models.py train WORK 3 --recipe l1+ssim   # WORK/x3_ssim from x3_l1/best
    python pipelines/default_models.py evaluate WORK 3 MODEL [--split test|val] [-o JSON]
    python pipelines/default_models.py bundle WORK 3 MODEL TEST_JSON   # -> ctvol/models/bundled

``train`` runs exactly::

    ctvol train WORK/train.zarr --factor K --epochs 400 -o WORK/xK_l1 --output-kind residual \\
        --crop 128 --batch-size 8 --max-windows 400 --seed 0 --select psnr \\
        --blocks pipelines/default_models.json --body-fraction 0.5 --loss l1 [--resume]

(one torch thread: ``OMP_NUM_THREADS=1``), stopped by hand; its ``best/``
is the epoch with the highest PSNR on the ``val`` blocks. ``--recipe l1+ssim``
continues from that ``best/`` with the SSIM loss (``--init WORK/xK_l1/best --lr 3e-4
--loss l1+ssim``, otherwise the same options) into ``WORK/xK_ssim``: the recipe
chosen for x3 on the val blocks (docs/training.md). ``evaluate`` runs
``ctvol.evaluate`` on each series' ``test`` (or ``val``) block with the
methods linear, unet and auto and prints, per series, mean PSNR / SSIM of
each method, the paired differences against linear with their p-values, and
whether the model meets the shipping rule (beats linear in mean PSNR **and**
SSIM on every test block).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import ctvol

HERE = pathlib.Path(__file__).resolve().parent
BLOCKS = HERE / "default_models.json"
SHARED = HERE.parent.parent / "shared" / "data"
SOURCES = [SHARED / "dcm_qa_ct_philips" / "S21570" / "S2020",
           SHARED / "human_ct" / "lidc_idri_0314", SHARED / "human_ct" / "tcga_de_a4ma"]


def ingest(work: pathlib.Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    rep = ctvol.ingest([str(s) for s in SOURCES], work / "train.zarr")
    print(rep.series.to_string(index=False))


def train(work: pathlib.Path, k: int, extra: list[str], recipe: str = "l1") -> None:
    out = work / (f"x{k}_l1" if recipe == "l1" else f"x{k}_ssim")
    stage = (["--loss", "l1"] if recipe == "l1" else
             ["--loss", "l1+ssim", "--init", str(work / f"x{k}_l1" / "best"), "--lr", "3e-4"])
    cmd = [sys.executable, "-m", "ctvol.cli", "train", str(work / "train.zarr"),
           "--factor", str(k), "--epochs", "400", "-o", str(out), "--output-kind", "residual",
           "--crop", "128", "--batch-size", "8", "--max-windows", "400", "--seed", "0",
           "--select", "psnr", "--blocks", str(BLOCKS), "--body-fraction", "0.5",
           *stage, *extra]
    if (out / "last" / "config.json").exists():
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env)


def blocks_of(store: pathlib.Path, split: str) -> dict[str, slice]:
    spec = json.loads(BLOCKS.read_text())["series"]
    out = {}
    for key in ctvol.list_series(store):
        uid = ctvol.open_series(store, key).attrs.get("series_uid", key)
        for lo, hi in spec.get(uid, {}).get(split, []):
            out[key] = slice(lo, hi)
    return out


def evaluate(store: pathlib.Path, k: int, model: str, split: str) -> dict:
    series = blocks_of(store, split)
    rep = ctvol.evaluate(store, k, methods=("linear", "unet", "auto"), model=model,
                         series=series)
    t = rep.table
    t = t[(t.convention == "generated") & (t.stride == 1) & t.metric.isin(["psnr", "ssim"])]
    rows = {}
    for key, sl in series.items():
        r = t[t.series == key].set_index(["method", "metric"])
        cell = {m: {met: float(r.loc[(m, met), "mean"]) for met in ("psnr", "ssim")}
                for m in ("linear", "unet", "auto")}
        for m in ("unet", "auto"):
            for met in ("psnr", "ssim"):
                d = r.loc[(f"{m} - linear", met)]
                cell[f"{m} - linear"] = {**cell.get(f"{m} - linear", {}),
                                         met: float(d["mean"]), f"p_{met}": float(d["p"])}
        cell["slices"] = [sl.start, sl.stop]
        cell["generated"] = int(r.loc[("linear", "psnr"), "n"] + r.loc[("linear", "psnr"),
                                                                       "n_exact"])
        runs = [e for e in rep.info["data"]["evaluated"] if e["series"] == key][0]["runs"]
        cell["auto_choice"] = runs[0].get("auto", {}).get("method")
        rows[key] = cell
    ships = all(c["unet - linear"]["psnr"] > 0 and c["unet - linear"]["ssim"] > 0
                for c in rows.values())
    return {"factor": k, "model": model, "split": split, "series": rows, "ships": ships}


def print_table(res: dict) -> None:
    print(f"x{res['factor']} {res['split']} blocks, model {res['model']}")
    print("series | slices | PSNR linear | PSNR unet | Δ (p) | SSIM linear | SSIM unet | Δ (p) "
          "| auto")
    for key, c in res["series"].items():
        d = c["unet - linear"]
        print(f"{key[-12:]} | {c['slices'][0]}-{c['slices'][1]} | {c['linear']['psnr']:.2f} | "
              f"{c['unet']['psnr']:.2f} | {d['psnr']:+.2f} ({d['p_psnr']:.1e}) | "
              f"{c['linear']['ssim']:.4f} | {c['unet']['ssim']:.4f} | "
              f"{d['ssim']:+.4f} ({d['p_ssim']:.1e}) | {c['auto_choice']}")
    print("ships (beats linear in PSNR and SSIM on every block):", res["ships"])


def _spans(store: pathlib.Path, split: str) -> dict[str, list[dict]]:
    """Per series key: the blocks of ``split`` as slice indices and z (mm)."""
    spec = json.loads(BLOCKS.read_text())["series"]
    out: dict[str, list[dict]] = {}
    for key in ctvol.list_series(store):
        ds = ctvol.open_series(store, key)
        z = ds["z"].values
        for lo, hi in spec.get(ds.attrs.get("series_uid", key), {}).get(split, []):
            out.setdefault(key, []).append({"index": [lo, hi - 1],
                                            "z_mm": [float(z[lo]), float(z[hi - 1])]})
    return out


def bundle(work: pathlib.Path, k: int, model: str, test_json: pathlib.Path) -> pathlib.Path:
    """Copy MODEL into ctvol/models/bundled/unet-xK with its provenance completed:
    the blocks each role read (as z ranges, which ``ctvol.evaluate`` checks), the
    sources and licences, and the test-block results."""
    from ctvol.models import load_model, save_model

    res = json.loads(test_json.read_text())
    if not res["ships"]:
        raise SystemExit(f"x{k} does not beat linear on every test block: not bundled")
    m = load_model(model)
    store = work / "train.zarr"
    sources = json.loads(BLOCKS.read_text())["sources"]
    prov = dict(m.provenance)
    prov.pop("blocks", None)
    prov.update({
        "store": "ctvol ingest of the three series below (pipelines/default_models.py ingest)",
        "data": sources,
        "licences": "phantom: BSD-2-Clause (dcm2niix dcm_qa_ct); LIDC-IDRI-0314 and "
                    "TCGA-DE-A4MA: CC BY 3.0 (The Cancer Imaging Archive)",
        "split": "contiguous z-blocks per series, pipelines/default_models.json",
        "training_slices": _spans(store, "train"),
        "selection_slices": _spans(store, "val"),
        "test_slices": _spans(store, "test"),
        "test": res["series"],
        "command": f"python pipelines/default_models.py train WORK {k}" + (
            " --recipe l1+ssim" if prov.get("loss") == "l1+ssim" else ""),
    })
    if prov.get("init"):  # the L1 run's best/ this run started from (a path on the build host)
        init = dict(prov["init"])
        init_epochs = load_model(init["model"]).provenance.get("epochs") \
            if pathlib.Path(init["model"]).exists() else None
        prov["init"] = {**init, "model": f"WORK/x{k}_l1/best", "epochs": init_epochs}
    for stale in ("holdout", "kernel", "pixel_spacing_mm", "slice_spacing_mm"):
        prov.pop(stale, None)
    m.provenance = prov
    dest = HERE.parent / "ctvol" / "models" / "bundled" / f"unet-x{k}"
    save_model(m, dest)
    (dest / "MODEL_CARD.md").write_text(card(k, m, res, sources))
    return dest


def optimisation(prov: dict) -> str:
    """The card's optimisation row, from the checkpoint's provenance."""
    base = "batch 8, 400 windows/epoch, seed 0, 1 CPU thread"
    if prov.get("loss") != "l1+ssim":
        return f"Adam lr 1e-3, L1 loss, {base}"
    init = prov.get("init") or {}
    return (f"two runs, {base}: Adam lr 1e-3 with L1 loss (the L1 run `x{{k}}_l1`, its best "
            f"epoch by val PSNR: {init.get('epochs')}, weights digest "
            f"{str(init.get('digest'))[:12]}), then from those weights Adam lr 3e-4 with "
            "0.84 (1 − SSIM) + 0.16 L1 (Zhao et al. 2017; `--loss l1+ssim`)").replace(
                "{k}", str(prov.get("factor")))


NAMES = {"233390035616": "phantom (Philips Ingenuity, head phantom, 1.0 mm)",
         "280013275227": "LIDC-IDRI-0314 (Philips Brilliance 16P, chest, 1.0 mm)",
         "627436835056": "TCGA-DE-A4MA (Siemens Biograph 40, skull to thigh, 2.5 mm)"}


def card(k: int, m: object, res: dict, sources: dict) -> str:
    prov = m.provenance  # type: ignore[attr-defined]
    a = m.config["architecture"]  # type: ignore[attr-defined]
    rows = []
    for key, c in res["series"].items():
        d = c["unet - linear"]
        rows.append(
            f"| {NAMES.get(key[-12:], key)} | {c['slices'][0]}-{c['slices'][1] - 1} "
            f"({c['generated']}) | {c['linear']['psnr']:.2f} | {c['unet']['psnr']:.2f} | "
            f"{d['psnr']:+.2f} ({d['p_psnr']:.1e}) | {c['linear']['ssim']:.4f} | "
            f"{c['unet']['ssim']:.4f} | {d['ssim']:+.4f} ({d['p_ssim']:.1e}) | "
            f"{c['auto_choice']} |")
    src = "\n".join(f"- `{uid}`: {text}" for uid, text in sources.items())
    return f"""# unet-x{k}: bundled reslice U-net, factor {k}

Generates the {k - 1} slices between two axial CT slices (re-slice system 1/{k}).
`ctvol reslice` uses it through `--method auto` (the default): per series, a
self-check on the series' own slices decides between it and linear interpolation.

| | |
| --- | --- |
| architecture | 2-D U-net, {a['depth']} levels, {a['base']} base filters, batch-norm, **residual** output (linear interpolation + learned correction, clipped to [0, 1]) |
| intensity | HU clipped to [-1024, 1024], mapped to [0, 1] |
| training data | three real CT series, three scanners and kernels (below) |
| split | contiguous z-blocks per series (`pipelines/default_models.json`): train / model selection (val) / test, at least 11 slices apart; test blocks chose nothing |
| windows | (i, i+{k}) and (i, i+{2 * k}), random 128×128 crops with ≥ 50 % body (> −500 HU) pixels, the paper's augmentation (rotation ±10°, shift ±10 %, zoom ±20 %, flip) |
| optimisation | {optimisation(prov)} |
| selection | epoch {prov.get('epochs')} of the {'second ' if prov.get('init') else ''}run had the highest PSNR on the val blocks' crops ({prov.get('val_psnr_unet', 0):.2f} dB vs linear {prov.get('val_psnr_linear', 0):.2f}) |
| command | `python pipelines/default_models.py ingest WORK` then `... {prov['command'].split('default_models.py ')[1]}` (runs `ctvol train ... --epochs 400`, stopped by hand on 2 shared cores; the run is seeded, so `--epochs {prov.get('epochs')}` replays it up to these weights: not re-run here), then `... bundle` |

Data (licences: {prov['licences']}):

{src}

## Test blocks (slices that neither trained nor chose anything)

`python pipelines/default_models.py evaluate WORK {k} ctvol/models/bundled/unet-x{k}`:
one slice in {k} of the block kept, the {k - 1} between generated and compared with the
real ones on [0, 1] intensities (data range 1.0); mean over generated slices;
paired t-test against linear on the same slices (p in brackets); `auto` is the
method `method="auto"` chose from the block's own kept slices.

| series | test slices (generated) | PSNR linear | PSNR U-net | Δ PSNR (p) | SSIM linear | SSIM U-net | Δ SSIM (p) | auto |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

## Limits

Three series from three scanners is little: two patients and one phantom.
These figures hold for these test blocks. On other scanners, kernels, pixel
sizes and body regions the model may lose to linear interpolation; that is why
`method="auto"` checks every series first and falls back to linear, and why
the output keeps the `generated` flag. Measure on your own data
(`ctvol evaluate`), and fine-tune on it (`ctvol train ... --init unet-x{k}`,
docs/training.md).
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ingest")
    s.add_argument("work", type=pathlib.Path)
    s = sub.add_parser("train")
    s.add_argument("work", type=pathlib.Path)
    s.add_argument("factor", type=int)
    s.add_argument("--recipe", choices=["l1", "l1+ssim"], default="l1")
    s = sub.add_parser("evaluate")
    s.add_argument("work", type=pathlib.Path)
    s.add_argument("factor", type=int)
    s.add_argument("model")
    s.add_argument("--split", choices=["test", "val"], default="test")
    s.add_argument("-o", "--output", type=pathlib.Path)
    s = sub.add_parser("bundle")
    s.add_argument("work", type=pathlib.Path)
    s.add_argument("factor", type=int)
    s.add_argument("model")
    s.add_argument("test_json", type=pathlib.Path)
    args, extra = p.parse_known_args(argv)
    if args.cmd == "ingest":
        ingest(args.work)
    elif args.cmd == "train":
        train(args.work, args.factor, extra, args.recipe)
    elif args.cmd == "bundle":
        print(bundle(args.work, args.factor, args.model, args.test_json))
    else:
        res = evaluate(args.work / "train.zarr", args.factor, args.model, args.split)
        print_table(res)
        if args.output:
            args.output.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
