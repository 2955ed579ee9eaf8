"""The campaign report: a JSON document and a short human summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VERDICT_MEANING = {
    "pass": "every acknowledged job was processed or failed visibly (within the loss window "
            "for powerloss)",
    "fail": "acknowledged jobs were lost (or the campaign could not test what it meant to)",
}


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def summary(report: dict[str, Any]) -> str:
    """A few lines a person reads in CI output."""
    server = report.get("server", {})
    lines = [
        f"durability {report['mode']}: {server.get('server')} {server.get('version')} "
        f"(appendonly {report.get('appendonly')}, appendfsync {report.get('appendfsync')}), "
        f"seed {report.get('seed')}",
        f"  kills {report['kills']}, max ready {report['max_ready_seconds']} s, "
        f"unsynced bytes dropped {report.get('dropped_unsynced_bytes', 0)}",
        f"  acknowledged {report['acknowledged']}, completed {report['completed']}, "
        f"failed {report['failed']}, duplicates {report['duplicates']}, "
        f"phantoms {report['phantoms']}",
        f"  lost {report['lost']} (outside window {report['lost_outside_window']}, "
        f"oldest lost ack {report['loss_window_seconds']} s before its kill)",
        *([f"  disk's fsync lag at each power cut: {report['kill_windows_seconds']} s "
           f"(allowed loss: the larger of this and {report['allowed_loss_window_seconds']} s)"]
          if report["mode"] == "powerloss" else []),
        f"  verdict: {report['verdict'].upper()} - {VERDICT_MEANING[report['verdict']]}",
    ]
    lines += [f"    - {reason}" for reason in report["reasons"]]
    if report.get("lost_ids"):
        lines.append(f"    lost ids (sample): {', '.join(report['lost_ids'][:10])}")
    return "\n".join(lines)
