"""The worker logs at the configured level, and no lower."""

import logging

import faust
import pytest

from slostream.cli import make_worker


@pytest.mark.parametrize("level", ["warning", "error", "info"])
def test_the_worker_keeps_the_root_logger_at_the_configured_level(level):
    """Faust's terminal spinner would set the root logger to DEBUG at warning and above, so every
    aiokafka debug call (one per message sent) would build a log record."""
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        worker = make_worker(faust.App("log-level-check", broker="kafka://127.0.0.1:1"), level)
        worker.redirect_stdouts = False  # the test's own stdout stays pytest's
        worker._setup_logging()
        assert root.level == getattr(logging, level.upper())
        assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
