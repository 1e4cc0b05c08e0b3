"""Logging of the workers of the LocalCluster that ``ctvol`` starts (imports distributed)."""

from __future__ import annotations

import logging
from typing import Any

from distributed import WorkerPlugin

__all__ = ["CancelledFilter", "QuietCancel"]


class CancelledFilter(logging.Filter):
    """Drop a worker's "ended with CancelledError" warnings: tasks cancelled because
    the user stopped the run (Ctrl-C) or a failure stopped it are not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ended with CancelledError" not in record.getMessage()


class QuietCancel(WorkerPlugin):
    """Installs :class:`CancelledFilter` on each worker."""

    idempotent = True

    def setup(self, worker: Any) -> None:
        logging.getLogger("distributed.worker.state_machine").addFilter(CancelledFilter())
