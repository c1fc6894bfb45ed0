"""A ring of closed windows' end times and values (uint32 and float32), persisted in chunks.

Window number ``n`` (counted from 0) is at slot ``n % capacity``; the capacity is a multiple of
``CHUNK``, so each chunk of ``CHUNK`` windows fills whole slots. Its state is the windows since
the newest chunk boundary (``open_part``) and its complete chunks, each persisted once when it
fills (``chunk``) and deleted once all of its windows have left the ring (``expired_chunk``): what
a series writes every window stays small, and what it keeps is bounded. An end of 0 marks a slot
whose chunk was not found at a restore.

>>> ring = WindowRing(400)
>>> for n in range(650):
...     _ = ring.push(1000 + n, float(n))
>>> ring.completed_chunk(), ring.expired_chunk(), len(ring.read()[0])
(None, None, 400)
>>> ends, values = ring.read()
>>> int(ends[0]), int(ends[-1])
(1250, 1649)
"""

from __future__ import annotations

from array import array

import numpy as np

CHUNK = 200  # windows per persisted chunk


class WindowRing:
    __slots__ = ("capacity", "count", "_ends", "_values")

    def __init__(self, capacity: int):
        if capacity % CHUNK:
            raise ValueError(f"a ring's capacity must be a multiple of {CHUNK}, not {capacity}")
        self.capacity = capacity
        self.count = 0  # windows ever pushed
        self._ends = array("I")
        self._values = array("f")

    def push(self, end: float, value: float) -> tuple[float, float] | None:
        """Add the newest window; the one it pushed out of the ring (None: none)."""
        if not self.capacity:
            return end, value
        if len(self._ends) < self.capacity:
            self._ends.append(int(end))
            self._values.append(value)
            self.count += 1
            return None
        slot = self.count % self.capacity
        out = float(self._ends[slot]), float(self._values[slot])
        self._ends[slot], self._values[slot] = int(end), value
        self.count += 1
        return out

    def _slots(self, first: int, stop: int) -> np.ndarray:
        return np.arange(first, stop) % self.capacity

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """The windows held, oldest first (those of a chunk lost at a restore left out)."""
        if not self.capacity:
            return np.zeros(0), np.zeros(0)
        slots = self._slots(max(0, self.count - self.capacity), self.count)
        ends = np.frombuffer(self._ends, dtype=np.uint32)[slots].astype(np.float64)
        values = np.frombuffer(self._values, dtype=np.float32)[slots].astype(np.float64)
        known = ends > 0
        return ends[known], values[known]

    def nbytes(self) -> int:
        return len(self._ends) * self._ends.itemsize + len(self._values) * self._values.itemsize

    # --- persistence ----------------------------------------------------------

    def open_part(self) -> tuple[bytes, bytes]:
        """The ends and values of the windows since the newest chunk boundary."""
        slots = self._slots(self.count - self.count % CHUNK, self.count)
        return (np.frombuffer(self._ends, dtype=np.uint32)[slots].tobytes(),
                np.frombuffer(self._values, dtype=np.float32)[slots].tobytes())

    def completed_chunk(self) -> int | None:
        """The number of the first window of the chunk the newest window completed (None: none)."""
        return self.count - CHUNK if self.capacity and self.count and self.count % CHUNK == 0 else None

    def expired_chunk(self) -> int | None:
        """The first window's number of the chunk whose last window the newest push put out of the
        ring (None: none): its persisted form is no longer needed."""
        first = self.count - self.capacity - CHUNK
        return first if self.capacity and first >= 0 and self.count % CHUNK == 0 else None

    def chunk(self, first: int) -> bytes:
        """The complete chunk of windows ``first`` to ``first + CHUNK``: ends, then values."""
        slots = self._slots(first, first + CHUNK)
        return (np.frombuffer(self._ends, dtype=np.uint32)[slots].tobytes()
                + np.frombuffer(self._values, dtype=np.float32)[slots].tobytes())

    def chunk_firsts(self) -> range:
        """The first window numbers of the complete chunks still (partly) in the ring."""
        open_first = self.count - self.count % CHUNK
        if not self.capacity:
            return range(0)
        return range(max(0, open_first - self.capacity), open_first, CHUNK)

    @classmethod
    def restore(cls, capacity: int, count: int, open_ends: bytes, open_values: bytes,
                chunks: dict[int, bytes]) -> WindowRing:
        """The ring of ``count`` windows from its open part and the chunks persisted (a chunk not
        of this ring's span is ignored; a missing one leaves a gap)."""
        ring = cls(capacity)
        ring.count = count
        held = min(count, capacity)
        ends, values = np.zeros(held, dtype=np.uint32), np.zeros(held, dtype=np.float32)
        open_first = count - count % CHUNK
        for first, body in chunks.items():
            if first in ring.chunk_firsts() and len(body) == 8 * CHUNK:
                slots = ring._slots(first, first + CHUNK)
                ends[slots] = np.frombuffer(body[:4 * CHUNK], dtype=np.uint32)
                values[slots] = np.frombuffer(body[4 * CHUNK:], dtype=np.float32)
        if held:
            slots = ring._slots(open_first, count)
            ends[slots] = np.frombuffer(open_ends, dtype=np.uint32)
            values[slots] = np.frombuffer(open_values, dtype=np.float32)
        ring._ends, ring._values = array("I", ends.tobytes()), array("f", values.tobytes())
        return ring
