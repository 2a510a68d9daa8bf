"""A test client of the live activity feed (/ws/events/) on channels' WebsocketCommunicator, and event writers."""

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import transaction
from django.urls import path

from apps.events.consumers import EventFeedConsumer
from apps.events.feed import EventHub
from apps.events.models import Event
from apps.events.selectors import event_payload, with_agent_names
from apps.events.services import log_event

ALLOWED_ORIGIN = "http://127.0.0.1:8000"
FOREIGN_ORIGIN = "https://evil.example"
# Every wait is bounded: a message that does not come fails the test after this long instead of hanging it.
RECEIVE_SECONDS = 10

Message = dict[str, Any]


def feed_application(hub: EventHub) -> Any:
    """The feed routed and authenticated as in timmy_site.asgi, with a hub of the test's own."""
    return AuthMiddlewareStack(URLRouter([path("ws/events/", EventFeedConsumer.as_asgi(hub=hub))]))


def browser_headers(*, session_key: str | None, origin: str | None = ALLOWED_ORIGIN) -> list[tuple[bytes, bytes]]:
    headers = []
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if session_key is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode()))
    return headers


class FeedClient:
    def __init__(self, application: Any, *, headers: list[tuple[bytes, bytes]], address: str) -> None:
        self.communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
        # Daphne puts the peer's address in the scope and the communicator does not; the application only
        # reads the scope once it starts, at connect().
        self.communicator.scope["client"] = (address, 50000)
        self.closed = False

    async def connect(self) -> bool:
        connected, _ = await self.communicator.connect(timeout=RECEIVE_SECONDS)
        return bool(connected)

    async def send(self, message: Any) -> None:
        await self.communicator.send_json_to(message)

    async def receive(self, timeout: float = RECEIVE_SECONDS) -> Message:
        message: Message = await self.communicator.receive_json_from(timeout=timeout)
        return message

    async def assert_nothing_arrives(self, seconds: float = 0.3) -> None:
        assert await self.communicator.receive_nothing(timeout=seconds), await self.receive()

    async def subscribe(self, **fields: Any) -> int:
        """Subscribe and return the feed's position from the `subscribed` answer."""
        await self.send({"action": "subscribe", "channel": "events", **fields})
        answer = await self.receive()
        assert answer["type"] == "subscribed", answer
        return int(answer["last_id"])

    async def ping(self) -> None:
        await self.send({"action": "ping"})
        assert await self.receive() == {"type": "pong"}

    async def collect(
        self, until: Callable[[Message], bool], *, timeout: float = RECEIVE_SECONDS
    ) -> list[tuple[float, Message]]:
        """Messages with their arrival (time.monotonic()) up to the first that satisfies `until`."""
        deadline = time.monotonic() + timeout
        received: list[tuple[float, Message]] = []
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"gave up waiting after {timeout} s; received {[m for _, m in received]}"
            message = await self.receive(timeout=left)
            received.append((time.monotonic(), message))
            if until(message):
                return received

    async def messages_through(self, last_id: int, *, timeout: float = RECEIVE_SECONDS) -> list[Message]:
        """Messages up to the one that accounts for event `last_id` (the event itself, or a skipped range)."""
        return [message for _, message in await self.collect(covers(last_id), timeout=timeout)]

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.communicator.disconnect(timeout=RECEIVE_SECONDS)


def covers(last_id: int) -> Callable[[Message], bool]:
    def until(message: Message) -> bool:
        if message["type"] == "event":
            return int(message["payload"]["id"]) >= last_id
        if message["type"] == "skipped":
            return int(message["to_id"]) >= last_id
        return False

    return until


def event_ids(messages: list[Message]) -> list[int]:
    return [m["payload"]["id"] for m in messages if m["type"] == "event"]


def arrived_after_logging(message: Message, arrival_wall_clock: float) -> float:
    """Seconds from an event's timestamp (set by log_event just before its insert) to its arrival here."""
    return arrival_wall_clock - datetime.fromisoformat(message["payload"]["timestamp"]).timestamp()


@database_sync_to_async
def log_events(*event_types: str, together: bool = False) -> list[int]:
    """Log one event of each type, each committed on its own or all in one transaction; return their ids."""
    if together:
        with transaction.atomic():
            return [log_event(t, source="test", data={"n": n}).id for n, t in enumerate(event_types)]
    return [log_event(t, source="test", data={"n": n}).id for n, t in enumerate(event_types)]


@database_sync_to_async
def stored_payloads(ids: list[int]) -> list[Message]:
    """The events as the feed sends them (with their agents' names, as the feed reads them)."""
    events = {e.id: e for e in with_agent_names(list(Event.objects.filter(id__in=ids)))}
    return [event_payload(events[i]) for i in ids]


@database_sync_to_async
def stored_ids_after(after_id: int, up_to_id: int | None = None) -> list[int]:
    qs = Event.objects.filter(id__gt=after_id)
    if up_to_id is not None:
        qs = qs.filter(id__lte=up_to_id)
    return list(qs.order_by("id").values_list("id", flat=True))


async def wait_until(condition: Callable[[], bool], *, timeout: float = RECEIVE_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not true after {timeout} s"
        await asyncio.sleep(0.01)
