"""The keys of the state changelog: ``<partition>␟<kind>[␟<field>...]`` (␟ is U+001F).

One key per piece of state a checkpoint writes (``PartitionProcessor.checkpoint``):

- ``c``: the partition's record (offsets, forwarding marks, alignment, idle clocks);
- ``h␟<series>``: a series' whole state;
- ``S␟<slo>``: an SLO's header; ``s␟<kind>␟<level>␟<slot>␟<slo>``: one of its count slots;
- ``a``: the alert book;
- ``e␟<id>``: an alert event sent since the offset a replay starts from (``Alerting``), written
  before the event is sent;
- ``m␟<policy>␟<first>␟<series>``: a complete chunk of a threshold model's history, from window
  number ``first`` (``core.threshold_model``; negative, ``-1 - n``, for its older ring's window
  ``n``), written once as it fills and deleted once its windows have left the history;
- ``r␟<policy>␟<series>``: a threshold model's newest recommendation and score, by level;
- ``t␟<slo>``: a threshold SLO's compliance model, schedule and newest recommendation;
- ``b␟<level>␟<slot>␟<series>``: a series' window slot of state version 3 and before (only read);
- ``fence``: ends a checkpoint on brokers that need it (restore skips it like any key it does not know).

>>> series_key(3, '["api","lat",{}]').split(SEP)
['3', 'h', '["api","lat",{}]']
>>> parse_key(3, slo_slot_key(3, "events", 0, 12, "api-availability"))
('s', ['events', '0', '12', 'api-availability'])
"""

from __future__ import annotations

SEP = "\x1f"
PARTITION, SERIES, SLO_HEADER, SLO_SLOT, BOOK, SENT_ALERT, OLD_SERIES_SLOT = "c", "h", "S", "s", "a", "e", "b"
MODEL_CHUNK, MODEL_REPORT, SLO_MODEL = "m", "r", "t"
_FIELDS = {PARTITION: 0, SERIES: 1, SLO_HEADER: 1, SLO_SLOT: 4, BOOK: 0, SENT_ALERT: 1, OLD_SERIES_SLOT: 3,
           MODEL_CHUNK: 3, MODEL_REPORT: 2, SLO_MODEL: 1}


def partition_prefix(partition: int) -> str:
    """What every key of ``partition`` starts with."""
    return f"{partition}{SEP}"


def partition_key(partition: int) -> str:
    return f"{partition}{SEP}{PARTITION}"


def series_key(partition: int, series: str) -> str:
    return f"{partition}{SEP}{SERIES}{SEP}{series}"


def slo_header_key(partition: int, name: str) -> str:
    return f"{partition}{SEP}{SLO_HEADER}{SEP}{name}"


def slo_slot_key(partition: int, kind: str, level: int, slot: int, name: str) -> str:
    return f"{partition}{SEP}{SLO_SLOT}{SEP}{kind}{SEP}{level}{SEP}{slot}{SEP}{name}"


def book_key(partition: int) -> str:
    return f"{partition}{SEP}{BOOK}"


def sent_alert_key(partition: int, event_id: str) -> str:
    return f"{partition}{SEP}{SENT_ALERT}{SEP}{event_id}"


def model_chunk_key(partition: int, policy: str, first: int, series: str) -> str:
    return f"{partition}{SEP}{MODEL_CHUNK}{SEP}{policy}{SEP}{first}{SEP}{series}"


def model_report_key(partition: int, policy: str, series: str) -> str:
    return f"{partition}{SEP}{MODEL_REPORT}{SEP}{policy}{SEP}{series}"


def slo_model_key(partition: int, slo: str) -> str:
    return f"{partition}{SEP}{SLO_MODEL}{SEP}{slo}"


def fence_key(partition: int) -> str:
    return f"{partition}{SEP}fence"


def parse_key(partition: int, key: str) -> tuple[str, list[str]] | None:
    """The kind of a key of ``partition`` and its fields (the last may hold anything); None for a
    key of another partition, or of a kind this version does not read."""
    prefix = partition_prefix(partition)
    if not key.startswith(prefix):
        return None
    kind, _, rest = key[len(prefix):].partition(SEP)
    fields = _FIELDS.get(kind)
    if fields is None:
        return None
    return kind, rest.split(SEP, fields - 1) if fields else []
