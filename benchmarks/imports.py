"""Import time: ``import ctvol`` must stay cheap (heavy dependencies load lazily).

Budget: ``import ctvol`` under 0.2 s and without importing torch, pydicom,
zarr, xarray, dask, scipy or matplotlib (they load when a verb needs them).
``timeraw_import_ctvol`` tracks the time (asv runs the code in a fresh
interpreter per sample); ``track_heavy_modules_after_import`` counts how many
of those heavy packages ``import ctvol`` pulled in (budget: 0), and
``track_import_budget_ratio`` is the import time over the 0.2 s budget
(> 1: over budget), measured in a fresh interpreter.
"""

import subprocess
import sys

HEAVY = ("torch", "pydicom", "zarr", "xarray", "dask", "scipy", "matplotlib", "pandas")
BUDGET_S = 0.2

_PROBE = (
    "import sys, time; t0 = time.perf_counter(); import ctvol; "
    "dt = time.perf_counter() - t0; "
    f"print(dt, sum(m in sys.modules for m in {HEAVY!r}))"
)


def _probe():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), int(out[1])


def timeraw_import_ctvol():
    # timeraw: asv runs the returned code in a fresh interpreter per sample.
    return "import ctvol"


def track_heavy_modules_after_import():
    return _probe()[1]


track_heavy_modules_after_import.unit = "modules"


def track_import_budget_ratio():
    return min(_probe()[0] for _ in range(5)) / BUDGET_S


track_import_budget_ratio.unit = "ratio"
