"""The checker's rules on hand-made ledgers (no Redis): it must be able to say "fail"."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.checker import CheckInput, check, loss_age
from harness.ledger import Ack, Effect, Ledger, LedgerData, read_ledger

pytestmark = pytest.mark.durability


def ledger(acks: dict[str, tuple[float, float]], effects: dict[str, int],
           kills: list[float], sent_extra: tuple[str, ...] = ()) -> LedgerData:
    data = LedgerData(kills=sorted(kills))
    for job_id, (sent_t, t) in acks.items():
        data.sent.add(job_id)
        data.acked[job_id] = Ack(sent_t=sent_t, t=t)
    data.sent.update(sent_extra)
    for job_id, count in effects.items():
        for attempt in range(count):
            data.effects[job_id].append(Effect(attempt=attempt + 1, worker="w0", t=0.0))
    return data


def test_loss_age_is_measured_to_the_next_kill_after_the_successful_attempt() -> None:
    kills = [10.0, 20.0]
    assert loss_age(Ack(sent_t=9.0, t=9.2), kills) == pytest.approx(0.8)
    # Sent before kill 1, answered by the restarted server: kill 2 ended its incarnation.
    assert loss_age(Ack(sent_t=10.5, t=11.0), kills) == pytest.approx(9.0)
    # Reply already on its way when the kill was recorded: age 0, not negative.
    assert loss_age(Ack(sent_t=9.99, t=10.01), kills) == 0.0
    assert loss_age(Ack(sent_t=21.0, t=21.1), kills) is None


def test_crash_fails_on_a_single_lost_job_and_counts_duplicates() -> None:
    data = ledger({"dur-1": (1.0, 1.1), "dur-2": (1.0, 1.1), "dur-3": (1.0, 1.1)},
                  {"dur-1": 2, "dur-2": 1}, kills=[5.0])
    result = check(data, CheckInput(mode="crash", kills_planned=1))
    assert (result.verdict, result.lost, result.duplicates) == ("fail", 1, 1)
    assert result.lost_ids == ["dur-3"]


def test_a_failed_entry_accounts_for_a_job() -> None:
    data = ledger({"dur-1": (1.0, 1.1)}, {}, kills=[5.0])
    data.failed["dur-1"] = "boom"
    result = check(data, CheckInput(mode="crash", kills_planned=1))
    assert (result.verdict, result.lost, result.failed) == ("pass", 0, 1)


def test_powerloss_allows_only_losses_inside_the_window() -> None:
    inside = ledger({"dur-1": (9.0, 9.5)}, {}, kills=[10.0])
    assert check(inside, CheckInput(mode="powerloss", kills_planned=1)).verdict == "pass"
    outside = ledger({"dur-1": (6.0, 6.5)}, {}, kills=[10.0])
    result = check(outside, CheckInput(mode="powerloss", kills_planned=1))
    assert (result.verdict, result.lost_outside_window) == ("fail", 1)
    assert result.loss_window_seconds == pytest.approx(3.5)
    never_killed = ledger({"dur-1": (11.0, 11.1)}, {}, kills=[10.0])
    assert check(never_killed, CheckInput(mode="powerloss")).lost_outside_window == 1


def test_a_late_disk_widens_a_cut_window_only_as_far_as_its_fsyncs_lagged() -> None:
    """Acked 3.5 s before the cut: outside the 2 s window while the disk fsynced every second,
    inside when its second-to-last fsync completed 4 s before the cut (a starved disk), and
    outside again when it lagged only 3 s; no fsyncs at all (`appendfsync no`) keeps 2 s."""
    powerloss = CheckInput(mode="powerloss", kills_planned=1)

    def cut_after(fsyncs: list[float]) -> LedgerData:
        data = ledger({"dur-1": (6.0, 6.5)}, {}, kills=[10.0])
        data.aof_fsyncs = {1: fsyncs}
        return data

    healthy = check(cut_after([8.0, 9.0, 9.9]), powerloss)
    assert (healthy.verdict, healthy.kill_windows_seconds) == ("fail", [1.0])
    late = check(cut_after([3.0, 6.0, 10.2]), powerloss)
    assert (late.verdict, late.lost_outside_window, late.kill_windows_seconds) == (
        "pass", 0, [4.0])
    lagging_less = check(cut_after([7.0, 9.5]), powerloss)
    assert (lagging_less.verdict, lagging_less.kill_windows_seconds) == ("fail", [3.0])
    assert "measured fsync lag" in lagging_less.reasons[0]
    never_synced = check(cut_after([]), powerloss)
    assert (never_synced.verdict, never_synced.kill_windows_seconds) == ("fail", [None])
    crash = check(cut_after([3.0, 6.0]), CheckInput(mode="crash", kills_planned=1))
    assert crash.kill_windows_seconds == [None]


def test_phantoms_missing_kills_undrained_queue_and_no_traffic_fail() -> None:
    phantom = ledger({"dur-1": (1.0, 1.1)}, {"dur-1": 1, "dur-9": 1}, kills=[5.0])
    assert check(phantom, CheckInput(mode="crash")).phantoms == 1
    assert check(phantom, CheckInput(mode="crash")).verdict == "fail"
    healthy = ledger({"dur-1": (1.0, 1.1)}, {"dur-1": 1}, kills=[5.0])
    assert check(healthy, CheckInput(mode="crash", kills_planned=1)).verdict == "pass"
    assert check(healthy, CheckInput(mode="crash", kills_planned=2)).verdict == "fail"
    undrained = CheckInput(mode="crash", kills_planned=1, undrained={"delayed": 3})
    assert check(healthy, undrained).verdict == "fail"
    assert check(LedgerData(), CheckInput(mode="crash")).verdict == "fail"


def test_ledger_round_trip_ignores_a_torn_last_line(tmp_path: Path) -> None:
    writer = Ledger(tmp_path)
    sent_at = writer.sent("dur-000001", 1)
    writer.acked("dur-000001", sent_at)
    writer.effect("dur-000001", 1, "w0")
    writer.kill(1, {"pending": 0})
    writer.ready(1, 0.25)
    writer.close()
    with (tmp_path / "worker.jsonl").open("a") as handle:
        handle.write('{"kind":"effect","id":"dur-0000')
    data = read_ledger(tmp_path)
    assert data.sent == {"dur-000001"}
    assert len(data.effects["dur-000001"]) == 1
    assert data.ready_seconds == [0.25]
    assert check(data, CheckInput(mode="crash", kills_planned=1)).verdict == "pass"

