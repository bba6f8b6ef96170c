"""A background loop logs its first store failure at warning, the rest of the run at debug."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from gateway.outagelog import LoopOutage


def test_one_warning_per_run_of_failures() -> None:
    outage = LoopOutage(structlog.get_logger("test"), "loop.store_unavailable")
    with capture_logs() as logs:
        for _ in range(5):
            outage.failed(error="down")
        outage.succeeded()
        outage.failed(error="down again")
    levels = [(line["log_level"], line.get("repeated")) for line in logs]
    assert levels == [
        ("warning", None),
        ("debug", 2),
        ("debug", 3),
        ("debug", 4),
        ("debug", 5),
        ("warning", None),
    ]
