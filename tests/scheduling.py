"""How `python3 dev.py test` spreads the suite over its xdist workers (tests/conftest.py hooks).

Each test module is one unit of work, run whole by one worker, so that its module-scoped servers
(a durability campaign, the browser's deployment, a shared web/worker stack) start once. Modules
named in SHARED_GROUPS form one unit: both HA modules build Sentinel topologies of six redis
processes, the partition ones on network namespaces whose /24 is drawn at random from 150; one at
a time keeps them from starving each other's failovers.

xdist's own `--dist loadgroup` groups by `xdist_group` marks that it carries in the node id; since
pytest 9.2 (structured node ids) that rename no longer takes effect (pytest-xdist issue 1386) and
every test silently became its own unit: modules ran on both workers at once, each setting up its
module fixtures again, and the HA modules ran side by side. `ModuleScheduling` is xdist's
`LoadScopeScheduling` with the module's group as the scope, whatever the node ids look like.

The units go out longest first (`unit_seconds`), so that no worker starts a minute-long module
when the other is almost done: a worker takes the next unit when it has two tests left.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from xdist.scheduler import LoadScopeScheduling

SHARED_GROUPS = {"test_ha_partition": "ha", "test_ha_sentinel": "ha"}

# Seconds per module (setup to teardown, in a CI run: 2 workers on this 2-core machine, load ~3) for
# the modules above ~10 s, measured with `--junitxml` summed per module. Only the order matters:
# refresh it when a module grows past its neighbours.
MODULE_SECONDS = {
    "test_durability": 94, "test_supervisor": 87, "test_worker_redis_faults": 76,
    "test_ha_partition": 65, "test_ha_sentinel": 52, "test_harness_e2e": 46,
    "test_workspaces_rotation": 34, "test_worker_processes": 33, "test_dashboard_browser": 24,
    "test_web_hardening": 17, "test_logging_format": 16, "test_workspaces_settings": 15,
    "test_worker_effect_lease": 15, "test_sample_event": 15, "test_prerequisites": 15,
    "test_workspaces_store": 13, "test_security_secrets": 13, "test_workspaces_e2e": 13,
    "test_worker_outcomes": 13, "test_workspaces_worker": 12, "test_security_tls": 12,
    "test_ha_cluster": 12, "test_ops_metrics_e2e": 11, "test_ops_cli_hostile": 11,
    "test_workspaces_oauth": 11, "test_interop_node": 10,
}
# An unlisted module with a test marked with one of these is taken to be long.
LONG_MARKS = ("slow", "durability")
LONG_UNLISTED_SECONDS = 30.0


def module_group(nodeid: str) -> str:
    """The unit a test belongs to: its module's stem, or its SHARED_GROUPS name."""
    stem = PurePosixPath(nodeid.split("::", 1)[0]).stem
    return SHARED_GROUPS.get(stem, stem)


def unit_seconds(stems: dict[str, bool]) -> dict[str, float]:
    """Each unit's expected seconds from its modules' stems (True: has a LONG_MARKS test)."""
    seconds: dict[str, float] = {}
    for stem, marked_long in stems.items():
        own = MODULE_SECONDS.get(stem, LONG_UNLISTED_SECONDS if marked_long else 0.0)
        group = SHARED_GROUPS.get(stem, stem)
        seconds[group] = seconds.get(group, 0.0) + own
    return seconds


class ModuleScheduling(LoadScopeScheduling):
    """One unit of work per module group (see the module docstring)."""

    def _split_scope(self, nodeid: str) -> str:
        return module_group(nodeid)
