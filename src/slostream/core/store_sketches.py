"""The quantile sketches of a ``WindowStore``'s windows: a window of at most ``SPARSE_KEYS``
positive values keeps their DDSketch keys in a log shared by all windows; past that, or at the
first zero or negative value, it holds a ``QuantileSketch``."""

from __future__ import annotations

import numpy as np

from .sketch import SPARSE_KEYS, QuantileSketch


class SparseKeyLog:
    """The ``WindowStore`` key log (``_log_row``, ``_log_key``, ``_log_size``), ``row_log`` and
    ``sketches``."""

    def _add_to_sketches(self, rows: np.ndarray, values: np.ndarray, keys: np.ndarray, sketchable: np.ndarray) -> None:
        """Values with a value, for rows whose readers need quantiles: keys into the log while a
        row has only a few positive ones, into its ``QuantileSketch`` past that."""
        held = np.fromiter((r in self.sketches for r in rows.tolist()), dtype=bool, count=rows.size) \
            if self.sketches else np.zeros(rows.size, dtype=bool)
        outgrown = np.unique(rows[~held & ~sketchable])  # a zero or negative value: bins from now on
        if outgrown.size:
            self._move_to_sketches(outgrown)
            held |= np.isin(rows, outgrown)
        logged = ~held
        if logged.any():
            self._append_log(rows[logged], keys[logged])
            counts = np.bincount(rows[logged])
            touched = np.flatnonzero(counts)
            self.row_log[touched] += counts[touched].astype(np.int32)
            full = touched[self.row_log[touched] > SPARSE_KEYS]
            if full.size:
                self._move_to_sketches(full)
        if held.any():
            order = np.argsort(rows[held], kind="stable")
            held_rows, held_values = rows[held][order], values[held][order]
            bounds = np.flatnonzero(np.diff(held_rows)) + 1
            for row, part in zip(held_rows[np.r_[0, bounds]].tolist(), np.split(held_values, bounds)):
                self.sketches[row].add_values(part)

    def _append_log(self, rows: np.ndarray, keys: np.ndarray) -> None:
        end = self._log_size + rows.size
        if end > len(self._log_row):
            size = max(1024, 2 * end)
            self._log_row = grown(self._log_row, size)
            self._log_key = grown(self._log_key, size)
        self._log_row[self._log_size:end] = rows
        self._log_key[self._log_size:end] = keys
        self._log_size = end

    def _log_of(self, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log entries of the flagged rows: (rows, keys), ordered by row, then arrival."""
        rows = self._log_row[:self._log_size]
        chosen = np.flatnonzero(flags[rows])
        order = np.argsort(rows[chosen], kind="stable")
        return rows[chosen][order], self._log_key[chosen][order]

    def _drop_log(self, flags: np.ndarray) -> None:
        rows = self._log_row[:self._log_size]
        keep = np.flatnonzero(~flags[rows])
        self._log_size = keep.size
        self._log_row[:keep.size] = rows[keep]
        self._log_key[:keep.size] = self._log_key[keep]

    def _flags(self, rows) -> np.ndarray:
        flags = np.zeros(len(self.row_start), dtype=bool)
        flags[rows] = True
        return flags

    def _move_to_sketches(self, rows: np.ndarray) -> None:
        flags = self._flags(rows)
        log_rows, log_keys = self._log_of(flags)
        bounds = np.searchsorted(log_rows, rows)
        ends = np.searchsorted(log_rows, rows, side="right")
        for row, a, b in zip(rows.tolist(), bounds.tolist(), ends.tolist()):
            self.sketches[row] = QuantileSketch.from_keys(log_keys[a:b], self.relative_accuracy)
        self.row_log[rows] = 0
        self._drop_log(flags)

    # --- closing ------------------------------------------------------------


def grown(array: np.ndarray, size: int) -> np.ndarray:
    grown = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
    grown[:len(array)] = array
    return grown
