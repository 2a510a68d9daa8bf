"""The live activity feed at /ws/events/ (ADR-022; protocol in docs/activity-feed.md).

The auth and origin tests go through the production ASGI application; the others route to the consumer as
production does (AuthMiddlewareStack, a real staff session) with a hub of their own that polls fast. The
tests of delivery run on both channel layers: in memory (polling only) and Redis (nudged on each commit).
"""

import asyncio
import json
import threading
import time
from itertools import pairwise

import pytest
from django.db import connection

from apps.events.consumers import EVENT_TYPES_MAX, REPLAY_MAX
from apps.events.feed import EventHub
from apps.events.services import log_event
from tests.events.feed_client import (
    FOREIGN_ORIGIN,
    browser_headers,
    covers,
    event_ids,
    feed_application,
    log_events,
    stored_ids_after,
    stored_payloads,
    wait_until,
)
from timmy_site.asgi import application as production_application
from timmy_site.routing import event_hub as production_hub

# The consumer reads the database from threads, so the test's writes must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

FAST_POLL_SECONDS = 0.02


@pytest.fixture
def hub():
    return EventHub(poll_seconds=FAST_POLL_SECONDS)


@pytest.fixture
def open_feed(hub, staff_session, feed_clients):
    """Opens a client of this test's hub as the logged-in staff member, from 127.0.0.1 unless told."""

    def open_client(address="127.0.0.1"):
        return feed_clients(feed_application(hub), headers=browser_headers(session_key=staff_session), address=address)

    return open_client


@pytest.fixture
async def subscriber(open_feed):
    """A connected staff client, not yet subscribed."""
    client = open_feed()
    assert await client.connect()
    return client


def assert_accounts_for(messages, expected_ids):
    """Each of `expected_ids` is, in order, either received as an event or inside a skipped range, exactly once."""
    position = 0
    for message in messages:
        if message["type"] == "event":
            assert message["payload"]["id"] == expected_ids[position], message
            position += 1
        else:
            assert message["type"] == "skipped", message
            missing = expected_ids[position : position + message["count"]]
            assert message["count"] >= 1
            assert len(missing) == message["count"], message
            assert (message["from_id"], message["to_id"]) == (missing[0], missing[-1]), message
            position += message["count"]
    assert position == len(expected_ids)


# The handshake, through timmy_site.asgi.application: staff session, allowed origin.


async def test_staff_session_from_an_allowed_origin_is_accepted_and_gets_events(staff_session, feed_clients):
    client = feed_clients(production_application, headers=browser_headers(session_key=staff_session))

    assert await client.connect()
    await client.subscribe()
    ids = await log_events("task.created")
    assert event_ids(await client.messages_through(ids[-1])) == ids


async def test_anonymous_connection_is_refused_at_the_handshake(feed_clients):
    client = feed_clients(production_application, headers=browser_headers(session_key=None))

    assert not await client.connect()


async def test_logged_in_user_who_is_not_staff_is_refused_at_the_handshake(plain_session, feed_clients):
    client = feed_clients(production_application, headers=browser_headers(session_key=plain_session))
    connections = dict(production_hub.connections)

    assert not await client.connect()
    await client.close()  # the server reports the refused socket's disconnect, as daphne does
    assert production_hub.connections == connections  # a refused handshake holds no slot


async def test_staff_session_from_a_foreign_origin_is_refused(staff_session, feed_clients):
    client = feed_clients(
        production_application, headers=browser_headers(session_key=staff_session, origin=FOREIGN_ORIGIN)
    )

    assert not await client.connect()


async def test_staff_session_without_an_origin_header_is_refused(staff_session, feed_clients):
    client = feed_clients(production_application, headers=browser_headers(session_key=staff_session, origin=None))

    assert not await client.connect()


# Connections per client address.


async def test_connection_beyond_the_per_address_limit_is_refused_while_other_addresses_are_accepted(
    settings, hub, open_feed
):
    settings.WEBSOCKET_MAX_PER_IP = 2
    first, second, third = open_feed("10.0.0.1"), open_feed("10.0.0.1"), open_feed("10.0.0.1")
    elsewhere = open_feed("10.0.0.2")

    assert await first.connect()
    assert await second.connect()
    assert not await third.connect()
    await third.close()  # the server reports the refused socket's disconnect, as daphne does
    assert await elsewhere.connect()

    assert hub.connections == {"10.0.0.1": 2, "10.0.0.2": 1}
    await second.ping()


async def test_closing_a_connection_frees_a_slot_for_its_address(settings, hub, open_feed):
    settings.WEBSOCKET_MAX_PER_IP = 2
    first, second, refused = open_feed("10.0.0.1"), open_feed("10.0.0.1"), open_feed("10.0.0.1")
    assert await first.connect()
    assert await second.connect()
    assert not await refused.connect()
    await refused.close()

    await first.close()
    again = open_feed("10.0.0.1")

    assert await again.connect()
    await again.ping()
    assert hub.connections == {"10.0.0.1": 2}


# Subscribing and live events.


async def test_subscribe_answers_with_the_feed_position_then_sends_live_events_in_id_order(channel_backend, subscriber):
    before = await log_events("task.created")

    position = await subscriber.subscribe()
    ids = await log_events("task.created", "task.assigned", "tool.called", "task.completed")

    assert position == before[-1]
    assert await subscriber.messages_through(ids[-1]) == [
        {"type": "event", "payload": payload} for payload in await stored_payloads(ids)
    ]


async def test_subscriber_to_event_types_gets_only_events_of_those_types(channel_backend, subscriber):
    await subscriber.subscribe(event_types=["tool.called", "tool.completed"])

    ids = await log_events(
        "task.created", "tool.called", "agent.joined", "tool.completed", "task.failed", "tool.called"
    )

    # The last event is one the client wants: the others, had they been sent, would have come before it.
    messages = await subscriber.messages_through(ids[-1])
    assert [(m["payload"]["id"], m["payload"]["event_type"]) for m in messages] == [
        (ids[1], "tool.called"),
        (ids[3], "tool.completed"),
        (ids[5], "tool.called"),
    ]


async def test_subscribing_again_replaces_the_filter(channel_backend, subscriber):
    await subscriber.subscribe(event_types=["task.created"])
    first = await log_events("tool.called", "task.created")
    assert event_ids(await subscriber.messages_through(first[-1])) == [first[1]]

    await subscriber.subscribe(event_types=["tool.called"])
    ids = await log_events("task.created", "tool.called", "task.created", "tool.called")

    messages = await subscriber.messages_through(ids[-1])
    assert [(m["payload"]["id"], m["payload"]["event_type"]) for m in messages] == [
        (ids[1], "tool.called"),
        (ids[3], "tool.called"),
    ]


async def test_subscribe_with_an_unknown_event_type_is_an_error_and_the_connection_stays_up(subscriber):
    await subscriber.send({"action": "subscribe", "channel": "events", "event_types": ["task.created", "nope.bad"]})

    answer = await subscriber.receive()
    assert answer["type"] == "error"
    assert "nope.bad" in answer["message"]
    await subscriber.ping()


# Resuming with `since`.


async def test_since_replays_the_stored_events_after_it_then_live_ones(channel_backend, subscriber):
    before = await log_events(*["task.created"] * 5)

    position = await subscriber.subscribe(since=before[1])
    live = await log_events("task.completed", "task.created")

    assert position == before[-1]
    assert event_ids(await subscriber.messages_through(live[-1])) == before[2:] + live


async def test_since_replays_only_the_subscribed_event_types(channel_backend, subscriber):
    before = await log_events("task.created", "tool.called", "task.created", "tool.completed", "tool.called")

    await subscriber.subscribe(since=before[0], event_types=["tool.called"])
    live = await log_events("tool.completed", "tool.called")

    assert event_ids(await subscriber.messages_through(live[-1])) == [before[1], before[4], live[1]]


async def test_since_at_the_newest_event_replays_nothing(channel_backend, subscriber):
    before = await log_events("task.created", "task.created")

    position = await subscriber.subscribe(since=before[-1])
    live = await log_events("task.assigned")

    assert position == before[-1]
    assert await subscriber.messages_through(live[-1]) == [
        {"type": "event", "payload": (await stored_payloads(live))[0]}
    ]


async def test_since_ahead_of_the_feed_position_sends_nothing_the_client_has_seen(
    settings, staff_session, feed_clients
):
    # The client saw events (from another web process, say) that this process's hub has not read yet. With a
    # buffer of 2, they would also overflow it: a skipped notice must not count them either.
    settings.ACTIVITY_FEED_BUFFER = 2
    slow_hub = EventHub(poll_seconds=2)  # in memory, no nudges: the hub reads only every 2 s
    application = feed_application(slow_hub)
    first, resuming = (feed_clients(application, headers=browser_headers(session_key=staff_session)) for _ in "ab")
    assert await first.connect()
    start = await first.subscribe()
    seen = await log_events("task.created", "task.created", "task.created", "task.created")

    assert await resuming.connect()
    position = await resuming.subscribe(since=seen[-1])
    live = await log_events("task.completed")

    assert position == start < seen[-1]
    assert await resuming.messages_through(live[-1]) == [{"type": "event", "payload": (await stored_payloads(live))[0]}]


async def test_since_beyond_the_newest_stored_event_resumes_from_the_newest_after_a_database_reset(
    channel_backend, subscriber
):
    # A tab kept the last id of a database that was since reset or restored to an older copy.
    stored = await log_events("task.created", "task.bidding")

    position = await subscriber.subscribe(since=stored[-1] + 5000)
    live = await log_events("task.completed", "task.failed")

    assert position == stored[-1]
    assert event_ids(await subscriber.messages_through(live[-1])) == live


async def test_since_further_back_than_the_replay_limit_skips_the_oldest_and_replays_the_newest(
    channel_backend, subscriber
):
    ids = await log_events(*["task.created"] * (REPLAY_MAX + 150), together=True)

    position = await subscriber.subscribe(since=ids[0] - 1)
    live = await log_events("task.completed")

    assert position == ids[-1]
    messages = await subscriber.messages_through(live[-1])
    assert messages[0] == {"type": "skipped", "count": 150, "from_id": ids[0], "to_id": ids[149]}
    assert [m["type"] for m in messages[1:]] == ["event"] * (REPLAY_MAX + 1)
    assert event_ids(messages) == ids[150:] + live


class EventWriter(threading.Thread):
    """Logs an event after another, each in its own transaction, from its own thread and connection."""

    def __init__(self):
        super().__init__(name="event-writer", daemon=True)
        self.stopping = threading.Event()
        self.written: list[int] = []
        self.error: BaseException | None = None

    def run(self):
        try:
            while not self.stopping.is_set():
                self.written.append(log_event("task.created", source="writer").id)
                time.sleep(0.001)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            connection.close()

    async def stop(self):
        self.stopping.set()
        await asyncio.to_thread(self.join, 10)
        assert not self.is_alive()
        assert self.error is None, self.error


async def test_since_has_no_gap_and_no_duplicate_at_the_seam_while_events_are_being_written(
    channel_backend, settings, open_feed
):
    settings.WEBSOCKET_EVENT_THROTTLE = 100_000
    settings.ACTIVITY_FEED_BUFFER = 100_000
    history = await log_events(*["task.created"] * 30)
    writer = EventWriter()
    writer.start()
    subscriptions = []
    try:
        for n in range(8):
            await asyncio.sleep(0.03 + 0.01 * n)
            # From far back (a long replay), and from the newest id this client could have seen (hub lagging).
            since = history[n] if n % 2 == 0 else (writer.written or history)[-1]
            client = open_feed()
            assert await client.connect()
            position = await client.subscribe(since=since)
            subscriptions.append((client, since, position))
        await asyncio.sleep(0.1)
    finally:
        await writer.stop()
    newest = writer.written[-1]

    for client, since, position in subscriptions:
        messages = await client.messages_through(newest)
        received = event_ids(messages)
        assert len(received) == len(messages)  # nothing skipped: the buffer is large enough
        assert all(a < b for a, b in pairwise(received))
        assert received == await stored_ids_after(since, newest), (since, position)
    # The far-back clients' seams fell inside the stream of writes: each had events both replayed and sent live.
    assert all(since < position < newest for _, since, position in subscriptions[::2])


# A slow client: throttled, told what it skipped, and no burden on others.


async def test_slow_client_gets_events_at_the_throttled_rate_and_a_skipped_notice_for_the_rest(
    channel_backend, settings, subscriber
):
    settings.WEBSOCKET_EVENT_THROTTLE = 10
    settings.ACTIVITY_FEED_BUFFER = 20
    await subscriber.subscribe()

    ids = await log_events(*["task.created"] * 200, together=True)

    received = await subscriber.collect(covers(ids[-1]))
    messages = [message for _, message in received]
    assert_accounts_for(messages, ids)
    assert any(m["type"] == "skipped" for m in messages)
    arrivals = [at for at, message in received if message["type"] == "event"]
    assert len(arrivals) >= 20  # the buffer's worth, at least
    # A burst of one second's worth (10), then no more than 10 a second.
    for k in range(10, len(arrivals)):
        assert arrivals[k] - arrivals[0] >= (k - 9) / 10 - 0.05, (k, arrivals[k] - arrivals[0])
    rate_after_burst = (len(arrivals) - 10) / (arrivals[-1] - arrivals[9])
    print(f"\n[{channel_backend}] slow client: {len(arrivals)} events, {rate_after_burst:.1f}/s after the burst")
    assert rate_after_burst <= 11


async def test_a_slow_client_does_not_hold_back_a_fast_one(channel_backend, settings, open_feed):
    settings.WEBSOCKET_EVENT_THROTTLE = 10
    settings.ACTIVITY_FEED_BUFFER = 20
    slow = open_feed()
    assert await slow.connect()
    await slow.subscribe()
    await slow.ping()  # its sender has taken the settings above
    settings.WEBSOCKET_EVENT_THROTTLE = 10_000
    settings.ACTIVITY_FEED_BUFFER = 1_000
    fast = open_feed()
    assert await fast.connect()
    await fast.subscribe()
    await fast.ping()

    ids = await log_events(*["task.created"] * 200, together=True)
    written = time.monotonic()
    slow_received, fast_received = await asyncio.gather(slow.collect(covers(ids[-1])), fast.collect(covers(ids[-1])))

    assert [message for _, message in fast_received] == [
        {"type": "event", "payload": payload} for payload in await stored_payloads(ids)
    ]
    fast_done = fast_received[-1][0]
    slow_events = [at for at, message in slow_received if message["type"] == "event"]
    print(
        f"\n[{channel_backend}] fast client had all 200 after {fast_done - written:.3f} s; "
        f"the slow one had {sum(at <= fast_done for at in slow_events)} of its {len(slow_events)}"
    )
    assert fast_done - written < 1
    assert fast_done < slow_events[-1]


# Malformed messages: an error each, and the connection stays up.

MALFORMED = [
    pytest.param({"text_data": "{"}, id="not-json"),
    pytest.param({"text_data": "[1, 2]"}, id="json-list"),
    pytest.param({"text_data": '"ping"'}, id="json-string"),
    pytest.param({"text_data": "[" * 100_000 + "]" * 100_000}, id="json-nested-too-deep"),
    pytest.param({"bytes_data": b'{"action": "ping"}'}, id="binary-frame"),
    pytest.param({"text_data": "{}"}, id="no-action"),
    pytest.param({"text_data": json.dumps({"action": "dance"})}, id="unknown-action"),
    pytest.param({"text_data": json.dumps({"action": ["ping"]})}, id="action-not-a-string"),
    pytest.param({"text_data": json.dumps({"action": "subscribe", "since": -1})}, id="since-negative"),
    pytest.param({"text_data": json.dumps({"action": "subscribe", "since": "x"})}, id="since-string"),
    pytest.param({"text_data": json.dumps({"action": "subscribe", "since": True})}, id="since-true"),
    pytest.param({"text_data": json.dumps({"action": "subscribe", "since": 1.5})}, id="since-float"),
    pytest.param({"text_data": json.dumps({"action": "subscribe", "channel": "tasks"})}, id="channel-unknown"),
    pytest.param({"text_data": json.dumps({"action": "subscribe", "channel": None})}, id="channel-null"),
    pytest.param(
        {"text_data": json.dumps({"action": "subscribe", "event_types": "task.created"})}, id="event-types-string"
    ),
    pytest.param({"text_data": json.dumps({"action": "subscribe", "event_types": [7]})}, id="event-types-number"),
    pytest.param(
        {"text_data": json.dumps({"action": "subscribe", "event_types": ["task.created"] * (EVENT_TYPES_MAX + 1)})},
        id="event-types-too-many",
    ),
]


@pytest.mark.parametrize("frame", MALFORMED)
async def test_malformed_message_gets_an_error_and_the_connection_still_answers(frame, hub, subscriber):
    await subscriber.communicator.send_to(**frame)

    answer = await subscriber.receive()
    assert answer["type"] == "error", answer
    assert answer["message"]
    await subscriber.ping()
    assert not hub.subscribers  # a refused subscribe subscribes nothing


async def test_malformed_message_leaves_the_subscription_as_it_was(subscriber):
    await subscriber.subscribe(event_types=["task.created"])

    await subscriber.send({"action": "subscribe", "since": -1})
    assert (await subscriber.receive())["type"] == "error"
    ids = await log_events("tool.called", "task.created")

    assert event_ids(await subscriber.messages_through(ids[-1])) == [ids[1]]


# Leaving.


async def test_unsubscribe_stops_events_and_keeps_the_connection(hub, subscriber):
    await subscriber.subscribe()
    first = await log_events("task.created")
    assert event_ids(await subscriber.messages_through(first[-1])) == first

    await subscriber.send({"action": "unsubscribe"})
    assert await subscriber.receive() == {"type": "unsubscribed"}
    later = await log_events("task.created")
    await wait_until(lambda: hub.last_id >= later[-1])  # the hub has read it: a subscriber would have it now

    assert not hub.subscribers
    await subscriber.ping()
    await subscriber.assert_nothing_arrives()


async def test_disconnect_removes_the_subscriber_and_frees_the_connection(hub, open_feed):
    clients = [open_feed(), open_feed()]
    for client in clients:
        assert await client.connect()
        await client.subscribe()
    assert len(hub.subscribers) == 2
    assert hub.connections == {"127.0.0.1": 2}

    for client in clients:
        await client.close()

    assert hub.subscribers == set()
    assert sum(hub.connections.values()) == 0
    assert not hub.connections
