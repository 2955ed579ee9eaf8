"""The harness's end-to-end mode (harness.e2e): the Procfile's web and worker processes, a real
redis-server with the project's redis.conf, signed events at 20/s, replies counted at the Slack
stand-in. Each campaign's quick form (a few seconds of traffic, a 4 s job lock, so that a 7 s
SIGSTOP outlasts the locks and the worker's command retry sized from them) runs here (all but
the power loss on one stack); the CLI runs the long ones (`python -m harness e2e --campaign
all`, docs/durability.md).

Each fault begins while Slack holds the answers of calls it accepted (jobs mid-call) and others
wait in the queue (`pending_at_fault`), so a campaign that loses or doubles nothing has shown
something. The control (`appendonly no`) must lose: the tally sees a loss when there is one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.e2e import quick, run_e2e, verdict
from harness.e2e_cli import main as cli_main
from harness.e2e_cli import table
from harness.powerloss import unavailable_reason
from harness.webhook_traffic import Sent, tally, unavailable_seconds
from tests.prerequisites import requires
from tests.test_durability import memory_backed

POWERLOSS_UNAVAILABLE = unavailable_reason()
needs_fuse = requires("the power-loss layer (FUSE)", POWERLOSS_UNAVAILABLE)


# One stack for these (one start-up), the control last (it leaves Redis without its data).
SERIES = ("crash", "maxmemory", "sigstop", "control")
KEPT = ("redis.log", "web.log", "worker.log")


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The campaigns without FUSE, one after the other on one stack. In RAM, as the durability
    campaigns: a slow shared disk makes even a crash lose (docs/durability.md)."""
    with memory_backed(tmp_path_factory.mktemp("e2e"), kept=KEPT) as work:
        reports = run_e2e([quick(campaign) for campaign in SERIES], work)
    return {report["campaign"]: checked(report) for report in reports}


def checked(report: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps({k: v for k, v in report.items() if k != "config"}))
    assert report["acked"] >= 40, report
    assert report["undrained"] == {}, report
    # The fault found work in flight: calls Slack had accepted and jobs waiting behind them.
    assert report["held_at_fault"] > 0 and report["pending_at_fault"] > report["held_at_fault"]
    return report


def assert_every_ack_replied_once(report: dict[str, Any]) -> None:
    assert (report["lost"], report["duplicates"]) == (0, 0), report
    assert report["verdict"] == "pass"


@pytest.mark.durability
def test_redis_crash_restart_from_aof_loses_and_doubles_nothing(
    series: dict[str, dict[str, Any]],
) -> None:
    assert_every_ack_replied_once(series["crash"])


@pytest.mark.durability
def test_redis_at_maxmemory_refuses_then_loses_and_doubles_nothing(
    series: dict[str, dict[str, Any]],
) -> None:
    report = series["maxmemory"]
    assert report["non_200"] > 0, "the webhook must have refused events while Redis was full"
    assert_every_ack_replied_once(report)


@pytest.mark.durability
def test_redis_stopped_past_the_job_lock_loses_and_doubles_nothing(
    series: dict[str, dict[str, Any]],
) -> None:
    report = series["sigstop"]
    assert report["outage_s"] >= 7 and report["non_200"] > 0
    assert_every_ack_replied_once(report)


@pytest.mark.durability
def test_control_crash_without_aof_loses_acknowledged_events(
    series: dict[str, dict[str, Any]],
) -> None:
    report = series["control"]
    assert report["appendonly"] == "no"
    assert report["lost"] > 0, "the tally must see the loss of a Redis without its AOF"
    assert (report["verdict"], report["expected"]) == ("fail", "fail")


@pytest.fixture(scope="module")
def on_fuse(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """A crash, then the power loss, on one stack whose data directory is the FUSE layer: the
    crash must be a crash there too (no drop), and the AOF it leaves must load after the cut."""
    with memory_backed(tmp_path_factory.mktemp("e2e-fuse"), kept=KEPT) as work:
        reports = run_e2e([quick("crash"), quick("powerloss")], work)
    return {report["campaign"]: checked(report) for report in reports}


@pytest.mark.durability
@needs_fuse
def test_crash_on_the_power_loss_layer_drops_and_loses_nothing(
    on_fuse: dict[str, dict[str, Any]],
) -> None:
    """Before the fix every campaign of a FUSE stack dropped the unsynced bytes: this crash
    lost 1 to 11 acknowledged events a run."""
    report = on_fuse["crash"]
    assert report["dropped_bytes"] == 0, report
    assert_every_ack_replied_once(report)


@pytest.mark.durability
@needs_fuse
def test_power_loss_loses_only_inside_the_fsync_window(
    on_fuse: dict[str, dict[str, Any]],
) -> None:
    report = on_fuse["powerloss"]
    assert report["dropped_bytes"] > 0
    # The disk made the AOF durable more than once before the cut: the lag is measured.
    assert report["fsync_lag_s"] is not None
    assert report["lost_outside_window"] == 0, report
    assert report["lost"] <= report["window_bound"]
    assert report["verdict"] == "pass"


def sent(index: int, status: int, at: float) -> Sent:
    return Sent(index, at, 1_700_000_000 + at, status, 0.1)


def ts(index: int) -> str:
    return f"1700000000.{index:06d}"


def test_tally_counts_lost_doubled_refused_and_unavailable() -> None:
    requests = [sent(1, 200, 0.0), sent(2, 200, 0.1), sent(3, 503, 0.2), sent(4, 0, 0.3),
                sent(5, 200, 1.2), sent(6, 200, 1.3)]
    counted = tally(requests, [ts(1), ts(1), ts(1), ts(2), ts(3), ts(6), "not-ours"])
    assert (counted.sent, counted.acked, counted.non_200) == (6, 4, 2)
    assert counted.lost == [5] and counted.doubled == [1] and counted.duplicates == 2
    assert counted.replied_not_acked == 1
    assert counted.unavailable_s == pytest.approx(1.0)  # from request 3 to request 5


def test_unavailable_runs_to_the_last_answer_when_no_200_follows() -> None:
    assert unavailable_seconds([sent(1, 200, 0.0), sent(2, 503, 1.0), sent(3, 503, 2.0)]) == \
        pytest.approx(1.1)
    assert unavailable_seconds([sent(1, 200, 0.0)]) == 0.0


@pytest.mark.parametrize(("row", "expected"), [
    ({"campaign": "crash", "lost": 1, "duplicates": 0}, ("fail", "pass")),
    ({"campaign": "crash", "lost": 0, "duplicates": 1}, ("fail", "pass")),
    ({"campaign": "control", "lost": 0, "duplicates": 0}, ("pass", "fail")),
    ({"campaign": "powerloss", "lost": 3, "duplicates": 0, "lost_outside_window": 1,
      "window_bound": 40}, ("fail", "pass")),
    ({"campaign": "powerloss", "lost": 3, "duplicates": 0, "lost_outside_window": 0,
      "window_bound": 40}, ("pass", "pass")),
])
def test_verdicts(row: dict[str, Any], expected: tuple[str, str]) -> None:
    assert verdict({"acked": 10, "undrained": {}, **row}) == expected


def test_table_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    lines = table([{"campaign": "crash", "acked": 100, "lost": 0, "verdict": "pass"}])
    assert lines.splitlines()[0].split()[:4] == ["campaign", "AOF", "sent", "acked"]
    assert cli_main(["--campaign", "maxmemory", "--topology", "sentinel"]) == 2
    assert "--topology sentinel runs --campaign crash" in capsys.readouterr().err
