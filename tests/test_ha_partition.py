"""The partition campaign end to end (harness.failover): the primary cut off from its replicas
and sentinels while the web and worker still reach it, healed after the failover. Each process
in its own network namespace (harness.netns): Linux, as root.

Theory: under `memory` the isolated primary keeps acknowledging, and the failover drops what it
took alone (the control); `replicas:1` cannot be confirmed there, so nothing acknowledged is
dropped. In both, the web and the workers leave the isolated primary once the sentinels name
another (REDIS_SENTINEL_CHECK_SECONDS), so jobs are completed on the new primary before the
partition heals: without that check, nothing was until the heal demoted the old primary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import netns
from harness.failover import FailoverConfig, run_failover

pytestmark = pytest.mark.slow  # two failover campaigns; still run in CI (issue 16)


@pytest.fixture(autouse=True)
def _namespaces() -> None:
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)


def test_replicas_1_loses_nothing_acknowledged_in_a_partition(tmp_path: Path) -> None:
    report = run_failover(FailoverConfig(fault="partition", ack="replicas:1"), tmp_path)
    print(json.dumps(report))
    assert report["acked"] >= 60
    assert report["lost"] == 0 and report["records_lost"] == 0
    assert_completed_on_the_new_primary_before_the_heal(report)


def test_memory_loses_what_the_isolated_primary_acknowledged(tmp_path: Path) -> None:
    # Some acknowledged jobs are never run here (stored on the isolated primary after its
    # worker left): waiting a minute for every reply would only time out. Not asserted: `lost`.
    report = run_failover(FailoverConfig(fault="partition", ack="memory", reply_wait=5.0),
                          tmp_path)
    print(json.dumps(report))
    assert report["records_lost"] > 0
    assert_completed_on_the_new_primary_before_the_heal(report)


def assert_completed_on_the_new_primary_before_the_heal(report: dict[str, Any]) -> None:
    first = report["fault_to_first_completed_on_new_s"]
    assert first is not None and first < report["fault_to_heal_s"], report
