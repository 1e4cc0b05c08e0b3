"""Ingest throughput to an S3 store vs a local disk store, in the same run (public API only).

    python pipelines/s3_ingest.py WORKDIR [--inputs DIR] [--repeats 3]
                                  [--scheduler threads|local]

Starts moto's S3 server on 127.0.0.1 (a free port; ``pip install
"moto[server]" s3fs``), then ingests ``--inputs`` (default: the bundled
sample, 33 files of 512² CT) alternately into a new local store under
WORKDIR and a new store in a new bucket, ``--repeats`` times each, with
``ctvol.ingest(..., storage_options=...)``. Prints per repetition the wall
time, slices/s, MB/s of input DICOM and the s3 / local time ratio, and the
stored size. The server runs in this process and shares its CPU: the ratio
is an upper bound on what a real object store costs per request.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shutil
import statistics
import time
import uuid

import ctvol

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "sample" / "dcm_qa_ct_philips"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("--inputs", type=pathlib.Path, default=SAMPLE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scheduler", default="threads", choices=["threads", "local"])
    args = parser.parse_args()

    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    so = {"key": "testing", "secret": "testing",
          "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "eu-west-1"}}
    fs = s3fs.S3FileSystem(**so)
    files = [p for p in args.inputs.rglob("*") if p.is_file()]
    mb_in = sum(p.stat().st_size for p in files) / 1e6
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[float]] = {"local": [], "s3": []}
    sizes: dict[str, float] = {}
    slices = 0
    try:
        with contextlib.ExitStack() as stack:
            if args.scheduler == "local":  # ctvol.ingest runs on the active Client
                from distributed import Client, LocalCluster

                cluster = stack.enter_context(LocalCluster(
                    n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"))
                stack.enter_context(Client(cluster))
            for rep in range(args.repeats):
                for where in ("local", "s3"):
                    if where == "local":
                        store = str(args.workdir / f"local-{rep}.zarr")
                        shutil.rmtree(store, ignore_errors=True)
                        opts = None
                    else:
                        bucket = f"ctvol-{uuid.uuid4().hex[:12]}"
                        fs.mkdir(bucket)
                        store, opts = f"s3://{bucket}/cohort.zarr", so
                    t0 = time.perf_counter()
                    report = ctvol.ingest(args.inputs, store, storage_options=opts)
                    secs = time.perf_counter() - t0
                    rows[where].append(secs)
                    slices = int(report.series["n_slices"].sum())
                    if where == "local":
                        sizes[where] = sum(p.stat().st_size for p in pathlib.Path(store)
                                           .rglob("*") if p.is_file()) / 1e6
                    else:
                        sizes[where] = sum(fs.du(f"{bucket}/cohort.zarr", total=False)
                                           .values()) / 1e6
                    print(f"{rep} {where:5s} {secs:6.2f} s  {slices / secs:6.1f} slices/s  "
                          f"{mb_in / secs:5.2f} MB/s in", flush=True)
                print(f"{rep} s3/local {rows['s3'][-1] / rows['local'][-1]:.2f}", flush=True)
    finally:
        server.stop()
    print(f"\n{len(files)} files, {mb_in:.1f} MB of DICOM, {slices} slices written; store "
          f"{sizes['local']:.1f} MB local, {sizes['s3']:.1f} MB s3; scheduler "
          f"{args.scheduler}; load average {os.getloadavg()[0]:.1f}")
    for where, secs in rows.items():
        med = statistics.median(secs)
        print(f"{where:5s} median {med:.2f} s ({', '.join(f'{s:.2f}' for s in secs)}): "
              f"{slices / med:.1f} slices/s, {mb_in / med:.2f} MB/s")
    ratios = [s / loc for s, loc in zip(rows["s3"], rows["local"], strict=True)]
    print(f"s3 / local per repetition: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
