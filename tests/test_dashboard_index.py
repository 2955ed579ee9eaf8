"""The job index written at enqueue time (slackq/job_index.py), on a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from slackq import job_index
from slackq.embedded import RedisProcess, free_port
from slackq.job_index import MAX_WORDS, Filters, JobFields, JobIndex, words
from slackq.settings import Settings
from tests.slack_requests import app_mention_envelope
from tests.waiting import wait_until
from tests.webhook_client import post_event, post_form, webhook


@pytest.fixture
async def index(redis_server: RedisProcess) -> AsyncIterator[JobIndex]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield JobIndex(client, "bull", "slack-events", retention_seconds=60)
    await client.aclose()


def test_fields_of_each_kind() -> None:
    event = JobFields.of("app_mention", app_mention_envelope("Ev1", channel="C9", text="Hi there"))
    assert (event.team, event.channel, event.user, event.event) == ("T0TEAM001", "C9",
                                                                   "U0USER001", "Ev1")
    command = JobFields.of("command:/deploy", {"team_id": "T2", "channel_id": "C2",
                                                "user_id": "U2", "text": "prod now"})
    assert (command.team, command.channel, command.user, command.text) == ("T2", "C2", "U2",
                                                                           "prod now")
    action = JobFields.of("interactive:block_actions", {"team": {"id": "T3"}, "user": {"id": "U3"},
                                                        "channel": {"id": "C3"}})
    assert (action.team, action.channel, action.user) == ("T3", "C3", "U3")
    assert JobFields.of("x", {"team_id": "T" * 500}).team == "T" * 64  # bounded


def test_words_are_bounded_distinct_and_lower_cased() -> None:
    assert words("Deploy DEPLOY <img src=x onerror=alert(1)> to prod") == [
        "deploy", "img", "src", "onerror", "alert", "prod"]
    assert len(words(" ".join(f"w{i}" for i in range(100)))) == MAX_WORDS


async def test_search_by_fields_and_words(index: JobIndex) -> None:
    await index.record("Ev1", "app_mention", app_mention_envelope("Ev1", channel="C1",
                                                                  text="deploy the API"), 1000)
    await index.record("Ev2", "app_mention", app_mention_envelope("Ev2", channel="C2",
                                                                  text="deploy the web"), 2000)
    assert await index.search(Filters(text="deploy")) == ["Ev2", "Ev1"]  # newest first
    assert await index.search(Filters(text="Deploy api")) == ["Ev1"]
    assert await index.search(Filters(channel="C2", text="deploy")) == ["Ev2"]
    assert await index.search(Filters(channel="C2", text="api")) == []
    assert await index.search(Filters(event="Ev1")) == ["Ev1"]
    assert await index.search(Filters(name="app_mention", team="T0TEAM001")) == ["Ev2", "Ev1"]
    assert await index.search(Filters()) == []
    assert await index.recent_teams() == ["T0TEAM001"]
    assert await index.channels_of(["T0TEAM001", "TOTHER"]) == {"T0TEAM001": ["C2", "C1"],
                                                               "TOTHER": []}


async def test_entries_expire_with_the_retention(index: JobIndex) -> None:
    await index.record("old", "app_mention", app_mention_envelope("old", text="hello"), 1_000)
    later = 1_000 + index.retention_ms + 1
    await index.record("new", "app_mention", app_mention_envelope("new", text="hello"), later)
    assert await index.search(Filters(text="hello")) == ["new"]  # the old one was forgotten
    assert await index.client.hkeys(index.terms_key) == ["new"]
    ttl = await index.client.pttl(index.key("word:hello"))
    assert 0 < ttl <= index.retention_ms


async def test_the_index_holds_at_most_max_indexed_jobs(index: JobIndex,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_index, "MAX_INDEXED", 3)
    for n in range(5):
        envelope = app_mention_envelope(f"Ev{n}", channel=f"C{n}", text=f"same unique{n}")
        await index.record(f"Ev{n}", "app_mention", envelope, 1_000 + n)
    assert await index.search(Filters(text="same")) == ["Ev4", "Ev3", "Ev2"]
    # The forgotten jobs' own terms are gone with them, keys included.
    assert not await index.client.exists(index.key("word:unique0"), index.key("channel:C1"))
    assert await index.client.hlen(index.terms_key) == 3
    assert await index.client.zcard(index.all_key) == 3


async def test_an_event_id_is_looked_up_as_the_job_id(index: JobIndex) -> None:
    await index.record("Ev1", "app_mention", app_mention_envelope("Ev1", channel="C1"), 1_000)
    assert await index.search(Filters(event="Ev1")) == ["Ev1"]
    assert await index.search(Filters(event="Ev1", channel="C1")) == ["Ev1"]
    assert await index.search(Filters(event="Ev1", channel="C2")) == []
    assert await index.search(Filters(event="EvNodeProduced")) == ["EvNodeProduced"]  # not indexed


async def test_stored_counts_per_minute(index: JobIndex) -> None:
    minute = 1_700_000_040_000  # a minute boundary, in ms
    for offset in (0, 5_000, 61_000):
        await index.record(f"Ev{offset}", "app_mention", app_mention_envelope(), minute + offset)
    counts = await index.stored_per_minute(minute - 3_600_000, minute + 3_600_000)
    assert counts == {minute // 1000: 2, minute // 1000 + 60: 1}
    assert 0 < await index.client.ttl(index.stats_key(minute // 1000 // 3600 * 3600))


async def test_the_webhook_indexes_what_it_stores(webhook_settings: Settings) -> None:
    async with webhook(webhook_settings) as client:
        envelope = app_mention_envelope("EvIDX1", channel="CIDX", text="please restart billing")
        assert (await post_event(client, envelope)).status_code == 200
        form = {"command": "/deploy", "text": "billing to prod", "team_id": "T0TEAM001",
                "channel_id": "CCMD", "user_id": "U0USER001", "trigger_id": "1.2.abc"}
        assert (await post_form(client, "/slack/commands", form)).status_code == 200
        index: JobIndex = client.app.state.enqueuer.index  # type: ignore[attr-defined]

        async def both_indexed() -> bool:  # written in the background, within FLUSH_SECONDS
            return len(await index.search(Filters(text="billing"))) == 2

        await wait_until(both_indexed, within=5, what="the two jobs indexed")
        assert await index.search(Filters(channel="CIDX", text="billing")) == ["EvIDX1"]


async def test_entries_queued_together_share_one_flush(index: JobIndex) -> None:
    for n in range(5):
        index.record_soon(f"Ev{n}", "app_mention", app_mention_envelope(f"Ev{n}", text="batch"))
    assert await index.search(Filters(text="batch")) == []  # nothing sent yet
    await index.flush()
    assert len(await index.search(Filters(text="batch"))) == 5
    await index.client.script_flush()  # as after a Redis restart: the script is loaded again
    index.record_soon("Ev9", "app_mention", app_mention_envelope("Ev9", text="again"))
    await index.flush()
    assert await index.search(Filters(text="again")) == ["Ev9"]


def evalsha_calls(url: str) -> int:
    with redis.Redis.from_url(url, decode_responses=True) as check:
        return int(check.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_flush_is_one_script_call_and_a_refused_entry_spares_the_others(
        index: JobIndex, redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    await index.client.set(index.key("channel:CBAD"), "not a sorted set")
    await index.client.script_load(job_index.RECORD_LUA)  # as after the first flush
    calls = evalsha_calls(redis_server.url)
    for event_id, channel in (("EvF1", "C1"), ("EvF2", "CBAD"), ("EvF3", "C3")):
        index.record_soon(event_id, "app_mention",
                          app_mention_envelope(event_id, channel=channel, text="flushed"))
    await index.flush()
    assert evalsha_calls(redis_server.url) - calls == 1  # three jobs, one round trip
    assert set(await index.search(Filters(text="flushed"))) >= {"EvF1", "EvF3"}
    assert await index.search(Filters(channel="C3")) == ["EvF3"]  # written after the refused one
    monkeypatch.setattr(job_index, "MAX_PER_CALL", 2)  # a long queue: bounded calls, one pipeline
    for n in range(5):
        index.record_soon(f"EvM{n}", "app_mention", app_mention_envelope(f"EvM{n}", text="many"))
    await index.flush()
    assert evalsha_calls(redis_server.url) - calls == 1 + 3
    assert len(await index.search(Filters(text="many"))) == 5


async def until_taken(index: JobIndex) -> None:
    """One turn of the loop at a time (at most 5 s) until the background flush, FLUSH_SECONDS
    after the first entry, has taken the queued entries to send them."""
    deadline = time.monotonic() + 5
    for _ in range(10_000_000):
        if not index._pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0)
    assert not index._pending, "the background flush never took the entry"


async def test_entries_queued_during_a_flush_are_flushed_too(index: JobIndex) -> None:
    index.record_soon("EvA", "app_mention", app_mention_envelope("EvA", text="during"))
    await until_taken(index)  # the flush's send of EvA's entry is still in flight
    index.record_soon("EvB", "app_mention", app_mention_envelope("EvB", text="during"))

    async def both() -> bool:  # EvB, queued while that flush was in flight, goes out too
        return len(await index.search(Filters(text="during"))) == 2

    await wait_until(both, within=5, what="the entry queued during a flush written")


async def test_flush_waits_for_a_background_write_before_the_client_closes(
        redis_server: RedisProcess) -> None:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    index = JobIndex(client, "bull", "slack-events", retention_seconds=60)
    index.record_soon("EvC", "app_mention", app_mention_envelope("EvC", text="closing"))
    await until_taken(index)
    await index.flush()  # as Enqueuer.close does, just before the client closes
    await client.aclose()
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as check:
        assert check.zscore(index.key("word:closing"), "EvC") is not None


async def test_an_index_failure_never_fails_the_webhook(webhook_settings: Settings) -> None:
    # One entry is refused (a key of the wrong type): the jobs are stored and acknowledged, and
    # the other entries of the same flush are written.
    async with webhook(webhook_settings) as client:
        enqueuer = client.app.state.enqueuer  # type: ignore[attr-defined]
        await enqueuer.index.client.set(enqueuer.index.key("channel:CBAD"), "not a sorted set")
        for event_id, channel in (("EvBAD1", "CBAD"), ("EvGOOD1", "CGOOD")):
            envelope = app_mention_envelope(event_id, channel=channel)
            assert (await post_event(client, envelope)).status_code == 200
        await enqueuer.index.flush()
        assert await enqueuer.queue.getJobState("EvBAD1") != "unknown"
        assert await enqueuer.index.search(Filters(channel="CGOOD")) == ["EvGOOD1"]


async def test_unreachable_redis_drops_entries_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    client = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    index = JobIndex(client, "bull", "slack-events", retention_seconds=60)
    monkeypatch.setattr(job_index, "MAX_PENDING", 2)
    for n in range(3):
        index.record_soon(f"Ev{n}", "app_mention", app_mention_envelope(f"Ev{n}"))
    assert index.dropped == 1
    await index.flush()  # logged, not raised
    await client.aclose()
