"""Every exception and warning ctvol raises.

The base is :class:`CtvolError`; each subclass also inherits the matching
builtin, so callers can catch either (as zarr's
``NodeNotFoundError(BaseZarrError, FileNotFoundError)``). Messages say what
went wrong, name the file or series and the offending value, and say what to
do about it.
"""

from __future__ import annotations

__all__ = [
    "CtvolError",
    "ConfigError",
    "CtvolWarning",
    "CurationError",
    "DataError",
    "DicomReadError",
    "GeometryError",
    "EvaluationWarning",
    "ExportError",
    "GeometryWarning",
    "HounsfieldRangeError",
    "IngestWarning",
    "LabelError",
    "MissingDependencyError",
    "ModelError",
    "ModelNotFoundError",
    "NoInputError",
    "OutputExistsError",
    "OptionError",
    "OptionTypeError",
    "PredictError",
    "SeriesNotFoundError",
    "StoreNotFoundError",
    "StoreError",
    "StoreWriteError",
    "VolumeError",
]


class CtvolError(Exception):
    """Base class of every ctvol error."""


class DicomReadError(CtvolError, OSError):
    """A DICOM file cannot be read or decoded."""


class GeometryError(CtvolError, ValueError):
    """Slice geometry that ctvol refuses to stack (or a geometry argument out of range)."""


class HounsfieldRangeError(CtvolError, ValueError):
    """Decoded Hounsfield units do not fit the int16 storage type."""


class StoreError(CtvolError, ValueError):
    """A path is not a ctvol cohort store, or the store is damaged."""


class StoreWriteError(CtvolError, OSError):
    """Writing to a store failed (disk full, permission denied, ...); names the path."""


class SeriesNotFoundError(CtvolError, KeyError):
    """No complete series with that key in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ExportError(CtvolError, ValueError):
    """A volume the asked export format cannot hold (e.g. a non-CT series as CT images)."""


class OutputExistsError(CtvolError, FileExistsError):
    """An export would overwrite files that ctvol did not write (names the path)."""


class ConfigError(CtvolError, ValueError):
    """A pipeline config that cannot run (unknown keys or stages, missing values)."""


class OptionError(CtvolError, ValueError):
    """An option the verb does not take, or a value out of its range (named as given:
    a keyword, a ``--flag``); the command line reports it as a usage error."""


class CtvolWarning(UserWarning):
    """Base class of every ctvol warning (tests turn these into errors)."""


class GeometryWarning(CtvolWarning):
    """Geometry that ctvol accepts but the user should know about."""


class EvaluationWarning(CtvolWarning):
    """An evaluation whose numbers are biased, e.g. on slices a model was trained on."""


class IngestWarning(CtvolWarning):
    """Something during ingest that did not stop it (files excluded, series split)."""


class NoInputError(CtvolError, FileNotFoundError):
    """Nothing to work on: no files under the given inputs."""


class CurationError(CtvolError, ValueError):
    """Curation cannot produce a volume: no body in any slice, nothing left to keep."""


class LabelError(CtvolError, ValueError):
    """Slice labels or landmark annotations that do not match the store (unknown slices)."""


class PredictError(CtvolError, ValueError):
    """A user's block predictor returned a block of the wrong shape or dtype."""


class VolumeError(CtvolError, ValueError):
    """A dataset that is not a ctvol volume: no ``hu`` on ``("z", "y", "x")``, or no
    slices (docs/storage.md)."""


class DataError(CtvolError, ValueError):
    """The data cannot serve the request: no windows or samples for the factor or
    patch asked, no series to evaluate (names the store and what is missing)."""


class ModelError(CtvolError, ValueError):
    """A model that cannot do what is asked: another factor or task, or a checkpoint
    of another format (names the model or its config)."""


class ModelNotFoundError(CtvolError, FileNotFoundError):
    """No model by that name or path: not bundled and not a checkpoint folder."""


class StoreNotFoundError(CtvolError, FileNotFoundError):
    """No cohort store at the path or URL given."""


class OptionTypeError(CtvolError, TypeError):
    """An argument of the wrong type (named, with the type given)."""


class MissingDependencyError(CtvolError, ImportError):
    """An optional dependency is not installed; the message names the extra that
    installs it (``pip install 'ctvol[torch]'``)."""
