from slostream.io.slicer import CHUNK_BYTES, MIN_CHUNK_BYTES, Slicer
from slostream.pipeline.types import SourceRecord


def test_a_batch_is_cut_at_the_cost_measured_on_its_own_first_slice():
    batch = [SourceRecord("m", 0, offset, 0.0, None, b"x" * 10_000) for offset in range(1000)]
    slicer = Slicer()
    sizes = []
    for records in slicer.slices(batch, forwarded=False):
        sizes.append(sum(len(r.value) for r in records))
        slicer.measured(False, records, 1e-9 * sizes[-1])  # cheap: 1 ns a byte
    assert sizes[0] >= MIN_CHUNK_BYTES and sizes[0] < 2 * MIN_CHUNK_BYTES
    assert all(size >= CHUNK_BYTES for size in sizes[1:-1]) and sum(sizes) == 10_000_000
