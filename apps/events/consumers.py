import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from apps.events import selectors
from apps.events.feed import EventHub, FeedEvent, Skipped, Subscriber
from apps.events.models import is_known_event_type

logger = logging.getLogger("timmy.feed")

# A client that resumes from far back gets the newest REPLAY_MAX events and a `skipped` notice for the rest,
# which the page fetches from /api/v1/events.
REPLAY_MAX = 1000
REPLAY_BATCH = 200
EVENT_TYPES_MAX = 50


class ProtocolError(ValueError):
    pass


class TokenBucket:
    """WEBSOCKET_EVENT_THROTTLE events per second per client, with bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.updated = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


class EventFeedConsumer(AsyncWebsocketConsumer):
    """`/ws/events/`: the live activity feed for staff browsers (protocol in docs/activity-feed.md)."""

    # Fan-out happens in this process through the hub; a per-client channel layer inbox would be unused.
    channel_layer_alias = None

    def __init__(self, *args: Any, hub: EventHub, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub
        self.address: str | None = None
        self.subscriber: Subscriber | None = None
        self.sender: asyncio.Task[None] | None = None
        self.closing: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_staff:
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        client = self.scope.get("client") or ("unknown", 0)
        address = str(client[0])
        if not self.hub.connection_opened(address):
            await self.close()
            return
        self.address = address
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self._unsubscribe()
        if self.address is not None:
            self.hub.connection_closed(self.address)
            self.address = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = self._parse(text_data)
            action = message.get("action")
            if action == "subscribe":
                await self._subscribe(message)
            elif action == "unsubscribe":
                await self._unsubscribe()
                await self._send({"type": "unsubscribed"})
            elif action == "ping":
                await self._send({"type": "pong"})
            else:
                raise ProtocolError(f"unknown action {action!r}; use subscribe, unsubscribe or ping")
        except ProtocolError as exc:
            await self._send({"type": "error", "message": str(exc)})

    @staticmethod
    def _parse(text_data: str | None) -> dict[str, Any]:
        if text_data is None:
            raise ProtocolError("send JSON text frames, not binary")
        try:
            message = json.loads(text_data)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[…" nested deeper than the parser goes
            raise ProtocolError(f"not JSON: {exc}") from exc
        if not isinstance(message, dict):
            raise ProtocolError("a message is a JSON object with an 'action'")
        return message

    async def _subscribe(self, message: dict[str, Any]) -> None:
        if message.get("channel", "events") != "events":
            raise ProtocolError("the only channel is 'events'")
        event_types = message.get("event_types")
        if event_types is not None:
            if not isinstance(event_types, list) or len(event_types) > EVENT_TYPES_MAX:
                raise ProtocolError(f"event_types is a list of at most {EVENT_TYPES_MAX} event types")
            unknown = [t for t in event_types if not isinstance(t, str) or not is_known_event_type(t)]
            if unknown:
                raise ProtocolError(f"unknown event types: {', '.join(map(str, unknown))[:200]}")
        since = message.get("since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
            raise ProtocolError("since is the id of the last event seen: a whole number, 0 or more")
        if since is not None and since > self.hub.last_id:
            # Ahead of this process's follower is fine (another process served the client); ahead of the log
            # itself means the database was reset or restored: resume from its newest event, not never.
            since = min(since, await database_sync_to_async(selectors.event_latest_id)())
        await self._unsubscribe()
        subscriber = Subscriber(
            event_types=frozenset(event_types) if event_types else None,
            buffer_size=settings.ACTIVITY_FEED_BUFFER,
            after_id=since or 0,
        )
        position = await self.hub.subscribe(subscriber)
        self.subscriber = subscriber
        self.sender = asyncio.create_task(self._deliver(subscriber, since, position))
        self.sender.add_done_callback(self._delivery_ended)

    def _delivery_ended(self, task: "asyncio.Task[None]") -> None:
        if task.cancelled() or task.exception() is None:
            return
        # E.g. the database failed during a replay. Closing makes the page reconnect and resume from its
        # last id, instead of sitting on a socket that will never carry another event.
        logger.error("live feed delivery failed; closing the socket", exc_info=task.exception())
        self.closing = asyncio.ensure_future(self.close(code=1011))

    async def _unsubscribe(self) -> None:
        if self.subscriber is not None:
            self.hub.unsubscribe(self.subscriber)
            self.subscriber = None
        if self.sender is not None:
            self.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sender
            self.sender = None

    async def _deliver(self, subscriber: Subscriber, since: int | None, position: int) -> None:
        """Replay what the client missed up to `position`, then send live events as the throttle allows."""
        await self._send({"type": "subscribed", "last_id": position})
        last_sent = position
        if since is not None and since < position:
            last_sent = await self._replay(subscriber.event_types, since, position)
        elif since is not None:
            last_sent = since
        bucket = TokenBucket(settings.WEBSOCKET_EVENT_THROTTLE)
        while True:
            await subscriber.ready.wait()
            while (item := subscriber.take()) is not None:
                if isinstance(item, Skipped):
                    await self._send(item.message())
                    last_sent = max(last_sent, item.to_id)
                    continue
                if item.id <= last_sent:
                    continue  # already replayed: the seam between replay and live
                await bucket.take()
                await self.send(text_data=item.frame)
                last_sent = item.id

    async def _replay(self, event_types: frozenset[str] | None, since: int, position: int) -> int:
        start = since
        oldest_kept = await database_sync_to_async(selectors.event_id_before_newest)(
            since, position, keep=REPLAY_MAX, event_types=event_types
        )
        if oldest_kept is not None:
            count, first, last = await database_sync_to_async(selectors.event_count_between)(
                since, oldest_kept, event_types=event_types
            )
            if count and first is not None and last is not None:
                await self._send(Skipped(count=count, from_id=first, to_id=last).message())
            start = oldest_kept - 1
        while True:
            events = await database_sync_to_async(selectors.events_after)(
                start, up_to_id=position, event_types=event_types, limit=REPLAY_BATCH
            )
            for event in events:
                await self.send(text_data=FeedEvent.of(event).frame)
                start = event.id
            if len(events) < REPLAY_BATCH:
                return position

    async def _send(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(message, ensure_ascii=False))
