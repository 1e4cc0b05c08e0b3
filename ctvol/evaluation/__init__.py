"""``ctvol.evaluate``: the paper's hold-out protocol on a cohort (``docs/evaluation.md``).

Modules, bottom up: ``_types`` (names, cases, the paired t-test; a leaf),
``_figures`` (PNG figures), ``_report`` (:class:`EvaluationReport`, its
aggregation, tables and files), ``_evaluate`` (:func:`evaluate`, the graphs).
"""

from ._evaluate import SERIES_WINDOW, evaluate
from ._report import EvaluationReport
from ._types import BASELINE, CONVENTIONS, METHODS, paired_t

__all__ = ["BASELINE", "CONVENTIONS", "METHODS", "SERIES_WINDOW", "EvaluationReport", "evaluate",
           "paired_t"]
