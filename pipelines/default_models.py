"""The bundled reslice U-nets (issue 13): ingest, train, choose, test — reproducibly.

The three real series of ``../shared/data`` (a head phantom, a chest and a
skull-to-thigh patient; three scanners and kernels) are ingested into one
store and split into contiguous z-blocks by ``default_models.json``: ``train``
blocks feed training, ``val`` blocks choose the epoch (highest validation
PSNR), ``test`` blocks choose nothing and give the model cards' figures.

    python pipelines/default_models.py ingest WORK            # WORK/train.zarr
    python pipelines/default_models.py train WORK 3           # WORK/x3_l1 (resumable)
    python pipelines/default_models.py evaluate WORK 3 MODEL [--split test|val] [-o JSON]

``train`` runs exactly::

    ctvol train WORK/train.zarr --factor K --epochs 400 -o WORK/xK_l1 --output-kind residual \\
        --crop 128 --batch-size 8 --max-windows 400 --seed 0 --select psnr \\
        --blocks pipelines/default_models.json --body-fraction 0.5 --loss l1 [--resume]

(one torch thread: ``OMP_NUM_THREADS=1``), stopped by hand; its ``best/``
is the epoch with the highest PSNR on the ``val`` blocks. ``evaluate`` runs
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


def train(work: pathlib.Path, k: int, extra: list[str]) -> None:
    out = work / f"x{k}_l1"
    cmd = [sys.executable, "-m", "ctvol.cli", "train", str(work / "train.zarr"),
           "--factor", str(k), "--epochs", "400", "-o", str(out), "--output-kind", "residual",
           "--crop", "128", "--batch-size", "8", "--max-windows", "400", "--seed", "0",
           "--select", "psnr", "--blocks", str(BLOCKS), "--body-fraction", "0.5",
           "--loss", "l1", *extra]
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ingest")
    s.add_argument("work", type=pathlib.Path)
    s = sub.add_parser("train")
    s.add_argument("work", type=pathlib.Path)
    s.add_argument("factor", type=int)
    s = sub.add_parser("evaluate")
    s.add_argument("work", type=pathlib.Path)
    s.add_argument("factor", type=int)
    s.add_argument("model")
    s.add_argument("--split", choices=["test", "val"], default="test")
    s.add_argument("-o", "--output", type=pathlib.Path)
    args, extra = p.parse_known_args(argv)
    if args.cmd == "ingest":
        ingest(args.work)
    elif args.cmd == "train":
        train(args.work, args.factor, extra)
    else:
        res = evaluate(args.work / "train.zarr", args.factor, args.model, args.split)
        print_table(res)
        if args.output:
            args.output.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
