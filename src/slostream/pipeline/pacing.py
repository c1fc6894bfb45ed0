"""When to checkpoint: on a fixed interval, but with a pause after each checkpoint scaled to its cost.

A checkpoint serialises every series changed since the last one while it holds the processing lock.
At high cardinality that is most series (100,000 series in catch-up: about a second of work), so a
fixed one-second interval would spend most of the time checkpointing. As Flink's minimum pause
between checkpoints, the next one waits ``PAUSE_FACTOR`` times the last one's duration after it
ended: checkpoints hold the lock at most 1 / (1 + PAUSE_FACTOR) of the time, and a longer gap
gathers more measurements per series into each write. Exactness does not depend on the interval
(replay marks); a crash only replays a little more.

>>> pacer = CheckpointPacer(interval_s=1.0)
>>> pacer.due(0.0)
True
>>> pacer.done(started=0.0, ended=0.5)
>>> pacer.due(1.0), pacer.due(2.5)
(False, True)
"""

from __future__ import annotations

PAUSE_FACTOR = 4.0


class CheckpointPacer:
    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._started = float("-inf")
        self._ended = float("-inf")
        self._duration = 0.0

    def due(self, now: float) -> bool:
        return now - self._started >= self.interval_s and now - self._ended >= PAUSE_FACTOR * self._duration

    def done(self, started: float, ended: float) -> None:
        """A checkpoint held the processing lock from ``started`` to ``ended``."""
        self._started, self._ended, self._duration = started, ended, ended - started
