"""End-to-end failover campaigns on a Sentinel topology: webhook -> Redis -> worker -> Slack.

    python -m harness failover --fault kill --ack replicas:1
    python -m harness failover --fault partition --ack memory      # root, Linux (ip netns)
    python -m harness failover --topology cluster --ack replicas:1 # Redis Cluster
    python -m harness failover --fault partition --ack memory \
        --server-option min-replicas-to-write=1 --server-option min-replicas-max-lag=1

One campaign: a primary, two replicas and three sentinels (`harness.topology`); the Procfile's
web and worker processes on its `redis+sentinel://` URL, replying to the Slack stand-in; signed
`app_mention` events at `rate` per second. Once `before` events are acknowledged, the fault:

* `kill`: SIGKILL the primary;
* `partition`: cut the primary off from the replicas and the sentinels while the web and worker
  still reach it; healed `partition_seconds` after the sentinels promoted a replica (the old
  primary then rejoins as a replica and drops what it took alone).

`--topology cluster`: three primaries with a replica each (`--cluster-replicas N`,
`harness.cluster`) on a `redis+cluster://` URL, prefix `{bull}`; `kill` SIGKILLs the primary
serving the `{bull}` slot and a replica takes over (the cluster's own failover,
`cluster-node-timeout` 1 s); the killed node is then restarted and rejoins as a replica.
`kill-lagging` (cluster only), the control: the replica is stopped (SIGSTOP) and its
replication link cut for `lag_seconds`, so the primary acknowledges writes it never gets; then
the primary is killed and the replica resumed: it takes over without them. `memory` must show
those acks lost, `replicas:1` none (its WAIT could not be confirmed meanwhile: 503s).

Traffic runs on for `after` acknowledged events past the fault (or `deadline`), then the
campaign waits for the replies. The report counts, per ACK_DURABILITY mode: events acked (200),
`lost` (acked, never replied to), `records_lost` (acked, no job left on the final primary: what
a failover dropped, even if a worker on the old primary replied first), duplicates (replies
beyond one), requests not acked, the longest gap between two 200s, the acks' p99, and the times
from the fault to the first stored job, the first completed job (its reply, from whichever
primary), the first job completed on the new primary (its `finishedOn` there) and the heal.
With `--work-dir DIR`, acked events still unreplied after the reply wait have their jobs'
state written to `DIR/unreplied.jsonl` (`harness.unreplied`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.cluster import ClusterTopology
from harness.procfile import procfile_stack
from harness.slack_standin import FakeSlack
from harness.topology import NodeProcess, SentinelTopology, ask
from harness.unreplied import append, job_states
from harness.webhook_traffic import EventTraffic, event_ts, tally

SECRET = "failover-campaign-signing-secret"
TOKEN = "xoxb-fake"
Fault = Literal["kill", "partition", "kill-lagging"]
Topology = Literal["sentinel", "cluster"]
CLUSTER_PREFIX = "{bull}"  # the cluster default of QUEUE_PREFIX


@dataclass(frozen=True)
class FailoverConfig:
    fault: Fault = "kill"
    topology: Topology = "sentinel"
    cluster_replicas: int = 1  # replicas per primary on a cluster
    ack: str = "memory"
    rate: float = 25.0
    before: int = 20
    after: int = 40
    partition_seconds: float = 3.0
    lag_seconds: float = 0.8  # kill-lagging: below cluster-node-timeout, or the replica is failed
    deadline: float = 90.0
    reply_wait: float = 60.0  # for every acked event's reply (then only the last one's, 30 s)
    # Where to write `unreplied.jsonl` when replies are missing ("" = nowhere; the CLI's
    # --work-dir), and for how long to keep taking its snapshots.
    post_mortem_dir: str = ""
    post_mortem: float = 90.0
    worker_processes: int = 2
    # Server settings of every data node, e.g. {"min-replicas-to-write": "1"}.
    server_options: tuple[tuple[str, str], ...] = ()


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


class Cluster:
    """A `ClusterTopology` seen as the campaign sees a Sentinel one: the URL, the fault, the
    failover, the primary that holds the queue."""

    def __init__(self, work: Path, replicas: int) -> None:
        self.topology = ClusterTopology(work, replicas=replicas).start()
        self.url = self.topology.url

    def kill_primary(self) -> NodeProcess:
        return self.topology.kill_owner(CLUSTER_PREFIX)

    def kill_primary_lagging(self, lag_seconds: float) -> NodeProcess:
        """Stop the primary's replica(s), let the primary take writes alone for `lag_seconds`,
        kill it, resume them: a replica promoted without the last writes."""
        port = self.topology.owner_port(CLUSTER_PREFIX) or 0
        replicas = self.topology.replicas_of(port)
        for replica in replicas:
            replica.pause()
        # Cut the replication links: what the primary sent before stays in the paused
        # replica's socket buffer, what it takes from now on reaches no replica.
        primary = self.topology.node(port)
        ask(primary.host, primary.port, lambda client: client.client_kill_filter(_type="replica"))
        time.sleep(lag_seconds)  # the fault's length: traffic goes on meanwhile
        old = self.topology.kill_owner(CLUSTER_PREFIX)
        for replica in replicas:
            replica.resume()
        return old

    def wait_failover(self, old_port: int) -> int:
        """Wait for the replica's takeover, then restart the killed node, as a supervisor
        would: it rejoins as the new primary's replica. Until then the shard has no replica,
        so `replicas:1` cannot be confirmed."""
        port = self.topology.wait_failover(CLUSTER_PREFIX, old_port)
        self.topology.node(old_port).start()
        return port

    def queue_primary(self) -> NodeProcess:
        return self.topology.node(self.topology.owner_port(CLUSTER_PREFIX) or 0)

    def stop(self) -> None:
        self.topology.stop()


def _topology(config: FailoverConfig, work: Path) -> SentinelTopology | Cluster:
    if config.topology == "cluster":
        if config.fault == "partition":
            raise ValueError("on a cluster the campaign's faults are kill and kill-lagging")
        return Cluster(work / "topology", config.cluster_replicas)
    if config.fault == "kill-lagging":
        raise ValueError("kill-lagging is a cluster campaign (--topology cluster)")
    return SentinelTopology(work / "topology", overrides=dict(config.server_options),
                            partitionable=config.fault == "partition").start()


def _fault(topology: SentinelTopology | Cluster, config: FailoverConfig) -> NodeProcess:
    """Apply the campaign's fault; return the primary it hit."""
    if isinstance(topology, Cluster):
        if config.fault == "kill-lagging":
            return topology.kill_primary_lagging(config.lag_seconds)
        return topology.kill_primary()
    if config.fault == "partition":
        return topology.partition_primary()
    return topology.kill_primary()


def _queue_primary(topology: SentinelTopology | Cluster) -> NodeProcess:
    if isinstance(topology, Cluster):
        return topology.queue_primary()
    primary = topology.primary_port()
    assert primary is not None
    return topology.node(primary)


def run_failover(config: FailoverConfig, work: Path) -> dict[str, Any]:
    """One campaign in `work` (topology data, process logs); returns the report."""
    topology = _topology(config, work)
    partition = isinstance(topology, SentinelTopology) and config.fault == "partition"
    slack = FakeSlack().start()
    env = {"ACK_DURABILITY": config.ack, "WORKER_PROCESSES": str(config.worker_processes),
           "WORKER_RATE_PER_CHANNEL": "0", "WORKER_RATE_PER_TEAM": "0"}
    try:
        with procfile_stack(topology.url, slack.base_url, work, secret=SECRET, token=TOKEN,
                            env=env) as dynos:
            # Bounded: the two waits below give up after `deadline` each.
            traffic = EventTraffic(dynos.base, SECRET, config.rate,
                                   int(config.rate * 3 * config.deadline), id_prefix="Ev0FO")
            traffic.start()
            try:
                _wait(lambda: len(traffic.acked()) >= config.before, config.deadline,
                      f"{config.before} events acknowledged before the fault")
                old = _fault(topology, config)
                fault_at, fault_wall = time.monotonic(), time.time()  # the fault is complete
                topology.wait_failover(old.port)
                healed_wall = None
                if partition and isinstance(topology, SentinelTopology):
                    time.sleep(config.partition_seconds)  # the fault's length, not a wait
                    topology.heal()
                    healed_wall = time.time()
                _wait(lambda: len(traffic.acked(fault_at)) >= config.after, config.deadline,
                      f"{config.after} events acknowledged after the fault")
            finally:
                traffic.finish()
            if partition and isinstance(topology, SentinelTopology):
                _wait(lambda: topology.replica_in_sync(old), config.deadline,
                      "the old primary to rejoin as a replica")
            report = _report(config, topology, slack, traffic, fault_at, fault_wall)
            report["fault_to_heal_s"] = (round(healed_wall - fault_wall, 3)
                                         if healed_wall is not None else None)
            dynos.check_alive()  # the same web and worker processes rode out the fault
            return report
    finally:
        slack.stop()
        topology.stop()


def _report(config: FailoverConfig, topology: SentinelTopology | Cluster, slack: FakeSlack,
            traffic: EventTraffic, fault_at: float, fault_wall: float) -> dict[str, Any]:
    acked = traffic.acked()
    expected = {event_ts(i) for i in acked}

    def replies() -> list[str]:
        return [str(c.args.get("thread_ts")) for c in slack.calls_to("chat.postMessage")]

    try:  # every acked event's reply, or at least the last one's
        _wait(lambda: expected <= set(replies()), config.reply_wait,
              "a reply to every acked event")
    except TimeoutError:
        _post_mortem(config, topology, acked, replies, fault_wall)
        _wait(lambda: event_ts(acked[-1]) in replies(), 30, "a reply to the last acked event")
    counted = tally(traffic.sent, replies())
    node = _queue_primary(topology)
    prefix = CLUSTER_PREFIX if isinstance(topology, Cluster) else "bull"
    records = set(_job_ids(node.host, node.port, prefix))
    # Completed on the final primary after the fault: on the new primary (what the old one
    # completed alone in a partition was dropped when it rejoined).
    finished = [at for at in _finished_on(node.host, node.port, records, prefix)
                if at > fault_wall]
    ok = sorted((s for s in traffic.sent if s.status == 200), key=lambda s: s.at)
    seconds = sorted(s.seconds for s in ok)
    # Jobs of requests sent after the fault: when the first was stored (its 200 came back) and
    # when the first was completed (its reply reached the stand-in).
    sent_after = {event_ts(s.index): s.answered_at for s in ok if s.at > fault_at}
    completed = [c.at for c in slack.calls_to("chat.postMessage")
                 if c.args.get("thread_ts") in sent_after]
    return {
        "topology": config.topology + (f" (replicas per primary: {config.cluster_replicas})"
                                       if config.topology == "cluster" else ""),
        "fault": config.fault, "ack_durability": config.ack, "sent": counted.sent,
        "acked": counted.acked, "lost": len(counted.lost),
        "records_lost": sum(1 for i in acked if f"Ev0FO{i:06d}" not in records),
        "duplicates": counted.duplicates, "not_acked": counted.non_200,
        "unavailable_s": round(max((b.at - a.at for a, b in itertools.pairwise(ok)),
                                   default=0.0), 3),
        "refused_s": round(counted.unavailable_s, 3),
        "ack_p99_ms": round(seconds[int(0.99 * (len(seconds) - 1))] * 1000, 1),
        "fault_to_first_stored_s": round(min(sent_after.values()) - fault_at, 3),
        "fault_to_first_completed_s": round(min(completed) - fault_wall, 3) if completed
        else None,
        "fault_to_first_completed_on_new_s": round(min(finished) - fault_wall, 3)
        if finished else None,
    }


def _post_mortem(config: FailoverConfig, topology: SentinelTopology | Cluster,
                 acked: list[int], replies: Any, fault_wall: float) -> None:
    """Snapshot the unreplied jobs on the final primary every 2 s (`harness.unreplied`) until
    they are all replied to or `config.post_mortem` seconds have passed: whether they are slow
    (they move, and their replies come) or lost (failed, or stuck) shows in the file."""
    if not config.post_mortem_dir:
        return
    out = Path(config.post_mortem_dir) / "unreplied.jsonl"
    node = _queue_primary(topology)
    prefix = CLUSTER_PREFIX if isinstance(topology, Cluster) else "bull"
    deadline = time.monotonic() + config.post_mortem
    while True:
        got = set(replies())
        missing = [f"Ev0FO{i:06d}" for i in acked if event_ts(i) not in got]
        append(out, time.time() - fault_wall,
               {"missing": len(missing), **job_states(node.host, node.port, prefix, missing)})
        if not missing or time.monotonic() > deadline:
            return
        time.sleep(2)


def _job_ids(host: str, port: int, prefix: str) -> list[str]:
    pattern = f"{prefix}:slack-events:Ev0FO*".replace("{", "\\{").replace("}", "\\}")
    keys = ask(host, port, lambda client: client.keys(pattern))
    return [str(key).rsplit(":", 1)[-1] for key in keys or []]


def _finished_on(host: str, port: int, job_ids: set[str], prefix: str) -> list[float]:
    """When each of `job_ids` was completed on the server at `host:port` (wall clock, s)."""
    def read(client: Any) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(f"{prefix}:slack-events:{job_id}", "finishedOn")
        return list(pipe.execute())

    return [int(at) / 1000 for at in ask(host, port, read) or [] if at]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness failover",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--fault", choices=("kill", "partition", "kill-lagging"), default="kill")
    parser.add_argument("--topology", choices=("sentinel", "cluster"), default="sentinel")
    parser.add_argument("--cluster-replicas", type=int, default=1,
                        help="replicas per primary with --topology cluster")
    parser.add_argument("--ack", default="memory", help="ACK_DURABILITY (memory, replicas:1…)")
    parser.add_argument("--rate", type=float, default=25.0)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--server-option", action="append", default=[], metavar="NAME=VALUE",
                        help="a data node setting, e.g. min-replicas-to-write=1 (repeatable)")
    args = parser.parse_args(argv)
    options = tuple(tuple(option.split("=", 1)) for option in args.server_option)
    if any(len(option) != 2 for option in options):
        parser.error("--server-option takes NAME=VALUE")
    config = FailoverConfig(fault=args.fault, topology=args.topology, ack=args.ack,
                            rate=args.rate, cluster_replicas=args.cluster_replicas,
                            server_options=options,
                            post_mortem_dir=str(args.work_dir or ""))
    with tempfile.TemporaryDirectory() as temporary:
        report = run_failover(config, args.work_dir or Path(temporary))
    print(json.dumps(report))
    return 0
