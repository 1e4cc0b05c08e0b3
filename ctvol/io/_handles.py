"""Per-process read handles on the ``hu`` arrays of a cohort store, for torch Datasets."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


class HuHandles:
    """``handles(key)``: the read-only ``series/<key>/hu`` array, opened once per process.

    A DataLoader worker opens its own handles, and pickling drops them: handles
    never cross processes.

    Parameters
    ----------
    store : str
        Store URL or path.
    storage_options : dict, optional
    config : callable, optional
        ``config(store)`` → the zarr config to open a handle under (the codec
        pipeline is chosen at opening and stays with the handle).
    """

    def __init__(self, store: str, storage_options: Any = None,
                 config: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.store, self.storage_options, self.config = store, storage_options, config
        self._arrays: dict[str, Any] = {}
        self._pid: int | None = None

    def __call__(self, key: str) -> Any:
        import zarr

        pid = os.getpid()
        if self._pid != pid:  # a fresh DataLoader worker: its own handles
            self._arrays, self._pid = {}, pid
        if key not in self._arrays:
            if self.config is None:
                self._arrays[key] = self._open(key)
            else:
                with zarr.config.set(self.config(self.store)):
                    self._arrays[key] = self._open(key)
        return self._arrays[key]

    def _open(self, key: str) -> Any:
        import zarr

        return zarr.open_array(self.store, path=f"series/{key}/hu", mode="r",
                               storage_options=self.storage_options)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}, "_pid": None}
