"""Curation: slice classification, blank removal, gap filling, the slice localizer.

* :func:`classify_slices` -- a class per slice, lazily, as a Dask map over
  z-blocks: the rule-based blank detector by default, or a trained classifier.
* :func:`curate` -- drop blank slices, keep contiguous runs, fill gaps
  between runs with generated slices.
* :func:`landmark_locations`, :func:`localize`, :func:`match_slices` -- the
  slice localizer (normalised body location 0..1).
* :func:`train_classifier`, :func:`train_localizer` -- train them from a store.
* :func:`curate_store` -- classify a whole store, write ``label`` per series
  (``ctvol curate STORE``).
* :func:`partition_of` -- the deterministic 70 / 20 / 10 series split.

See ``docs/curation.md``.
"""

from ..models._slice import SliceModel, load_slice_model, save_slice_model, slice_net
from ..training._partition import partition_of
from ._blank import body_fraction
from ._classify import BLANK_CLASSES, PAPER_CLASSES, classify_slices
from ._curate import curate, find_gaps
from ._localizer import LANDMARKS, landmark_locations, localize, match_slices
from ._store import curate_store
from ._train import read_slice_labels, train_classifier, train_localizer

__all__ = [
    "BLANK_CLASSES",
    "LANDMARKS",
    "PAPER_CLASSES",
    "SliceModel",
    "body_fraction",
    "classify_slices",
    "curate",
    "curate_store",
    "find_gaps",
    "landmark_locations",
    "load_slice_model",
    "localize",
    "match_slices",
    "partition_of",
    "read_slice_labels",
    "save_slice_model",
    "slice_net",
    "train_classifier",
    "train_localizer",
]
