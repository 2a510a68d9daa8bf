"""Events written by other processes (the worker, a management command) reach the live feed (ADR-022).

A real `manage.py run_tool swarm_status` writes tool.called and tool.completed into the test database; on the
redis backend it also nudges the feed through the test's Redis, as the worker does in production.
"""

import asyncio
import time

import pytest

from apps.events.feed import EventHub
from tests.events.feed_client import (
    arrived_after_logging,
    browser_headers,
    event_ids,
    feed_application,
    log_events,
    stored_ids_after,
)

# The subprocess writes to the test database, so it must be a real, committed one.
pytestmark = pytest.mark.django_db(transaction=True)

SUBPROCESS_SECONDS = 60
LATENCY_BOUND_SECONDS = {"embedded": 1.0, "redis": 0.5}


def is_tool_completed(message):
    return message["type"] == "event" and message["payload"]["event_type"] == "tool.completed"


async def run_tool_while_listening(client, run_manage):
    """Run `manage.py run_tool swarm_status` while `client` listens; return its messages with wall-clock
    arrival times, and when the subprocess had exited."""
    to_wall_clock = time.time() - time.monotonic()

    async def run_tool():
        result = await asyncio.to_thread(run_manage, "run_tool", "swarm_status", timeout=SUBPROCESS_SECONDS)
        return result, time.time()

    tool = asyncio.create_task(run_tool())
    try:
        received = await client.collect(is_tool_completed, timeout=SUBPROCESS_SECONDS)
    finally:
        result, exited = await tool
    assert result.returncode == 0, result.stderr
    return [(at + to_wall_clock, message) for at, message in received], exited


async def subscribed_client(hub, staff_session, feed_clients, **subscription):
    client = feed_clients(feed_application(hub), headers=browser_headers(session_key=staff_session))
    assert await client.connect()
    position = await client.subscribe(**subscription)
    return client, position


async def test_events_written_by_another_process_reach_a_subscribed_client(
    channel_backend, settings, subprocess_env, run_manage, staff_session, feed_clients
):
    assert subprocess_env.get("REDIS_URL", "") == settings.REDIS_URL  # on redis, the subprocess nudges
    hub = EventHub()  # polling as in production (ACTIVITY_FEED_POLL_SECONDS)
    client, position = await subscribed_client(hub, staff_session, feed_clients)

    received, exited = await run_tool_while_listening(client, run_manage)

    messages = [message for _, message in received]
    assert [m["type"] for m in messages] == ["event", "event"]
    assert [m["payload"]["event_type"] for m in messages] == ["tool.called", "tool.completed"]
    assert all(m["payload"]["source"] == "cli" and m["payload"]["data"]["tool"] == "swarm_status" for m in messages)
    assert event_ids(messages) == await stored_ids_after(position)
    latencies = [arrived_after_logging(message, at) for at, message in received]
    completed_at = received[-1][0]
    print(
        f"\n[{channel_backend}] run_tool's events reached the client {latencies[0] * 1000:.0f} ms and "
        f"{latencies[1] * 1000:.0f} ms after they were logged; tool.completed arrived "
        f"{(completed_at - exited) * 1000:+.0f} ms from the subprocess's exit"
    )
    assert completed_at <= exited + 1
    assert max(latencies) < LATENCY_BOUND_SECONDS[channel_backend]


@pytest.mark.parametrize("channel_backend", ["redis"], indirect=True)
async def test_a_commit_in_another_process_wakes_the_feed_through_redis_before_its_next_poll(
    channel_backend, subprocess_env, run_manage, staff_session, feed_clients
):
    assert subprocess_env["REDIS_URL"]
    hub = EventHub(poll_seconds=SUBPROCESS_SECONDS)  # it would not poll during the test: only a nudge can deliver
    client, _ = await subscribed_client(hub, staff_session, feed_clients)

    received, _ = await run_tool_while_listening(client, run_manage)

    assert [message["payload"]["event_type"] for _, message in received] == ["tool.called", "tool.completed"]
    latencies = [arrived_after_logging(message, at) for at, message in received]
    print(f"\n[redis, no polling] nudged delivery: {', '.join(f'{s * 1000:.0f} ms' for s in latencies)}")
    assert max(latencies) < LATENCY_BOUND_SECONDS["redis"]


async def test_after_a_hub_restart_a_client_resuming_from_its_last_id_gets_exactly_what_it_missed(
    channel_backend, run_manage, staff_session, feed_clients
):
    before_restart = EventHub(poll_seconds=0.02)
    client, _ = await subscribed_client(before_restart, staff_session, feed_clients)
    seen = await log_events("task.created", "task.assigned")
    last_seen = event_ids(await client.messages_through(seen[-1]))[-1]
    await client.close()
    # The web process goes away (the old hub is not used again). Meanwhile the worker and this process write.
    result = await asyncio.to_thread(run_manage, "run_tool", "swarm_status", timeout=SUBPROCESS_SECONDS)
    assert result.returncode == 0, result.stderr
    written_away = await log_events("task.failed")

    after_restart = EventHub(poll_seconds=0.02)
    client, position = await subscribed_client(after_restart, staff_session, feed_clients, since=last_seen)
    live = await log_events("task.created")

    assert position == written_away[-1]
    messages = await client.messages_through(live[-1])
    missed = await stored_ids_after(last_seen)
    assert event_ids(messages) == missed
    assert len(messages) == len(missed)
    assert [m["payload"]["event_type"] for m in messages] == [
        "tool.called",
        "tool.completed",
        "task.failed",
        "task.created",
    ]
