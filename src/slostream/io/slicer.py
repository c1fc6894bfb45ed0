"""How fetched batches are cut for the pipeline."""

from __future__ import annotations

from slostream.pipeline.types import SourceRecord

# Measured: the pipeline is fastest on slices of a few MB (about 50,000 measurements);
# larger ones fall out of the CPU caches, smaller ones pay per-call overhead. Slices are cut smaller
# when they cost more than CHUNK_SECONDS (``Slicer``).
CHUNK_BYTES = 2 << 20
MIN_CHUNK_BYTES = 64 << 10
CHUNK_SECONDS = 0.2


class Slicer:
    """Cuts fetched batches into slices of about ``CHUNK_SECONDS`` of processing. The two topics'
    records cost differently: forwarded by slostream (the repartition topic: applied to their
    series, dear with sparse series, each measurement a window close) or read from producers (the
    measurement topic: mostly decoded and forwarded on, cheap). Each kind's cost per byte is
    measured on its own slices: the slowest lately, decaying by a tenth a slice. Dense series keep
    large slices; sparse ones never hold the event loop long."""

    def __init__(self) -> None:
        self.seconds_per_byte = {False: 0.0, True: 0.0}

    def slices(self, batch: list[SourceRecord], forwarded: bool):
        """Slices of ``batch`` (of the repartition topic if ``forwarded``), in order. Each slice's
        size follows the cost measured up to it: a first batch cut at the size for an unknown cost
        made hundreds of slices of a few records, each forwarding a small record to every owner."""
        start = size = 0
        limit = self._limit(forwarded)
        for index, record in enumerate(batch):
            size += len(record.value or b"")
            if size >= limit:
                yield batch[start:index + 1]
                start, size = index + 1, 0
                limit = self._limit(forwarded)
        if start < len(batch):
            yield batch[start:]

    def measured(self, forwarded: bool, records: list[SourceRecord], seconds: float) -> None:
        size = max(sum(len(r.value or b"") for r in records), 1)
        self.seconds_per_byte[forwarded] = max(seconds / size, self.seconds_per_byte[forwarded] * 0.9)

    def _limit(self, forwarded: bool) -> int:
        cost = self.seconds_per_byte[forwarded]
        if cost <= 0:
            return MIN_CHUNK_BYTES
        return int(min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, CHUNK_SECONDS / cost)))
