"""The live activity feed's plumbing (ADR-022): one follower of the event table per web process.

The event table is the only source of truth. Each web process runs one `EventHub`, which reads the events
committed after the last one it saw (by id) and offers them to the process's subscribed WebSocket clients.
It reads when nudged through the channel layer (with Redis: every commit, in any process, sends a nudge) and
at least every ACTIVITY_FEED_POLL_SECONDS, so the embedded default needs no Redis and a lost nudge only costs
latency. No client ever queries the table for live events; a restart of any process loses nothing, because a
reconnecting client resumes from the last id it saw.

The follower reads through one thread of its own, which keeps one database connection for as long as it follows:
ten reads a second must not open and close ten connections a second.
"""

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers, get_channel_layer
from django.conf import settings
from django.db import connections, transaction
from redis.exceptions import RedisError

from apps.events import selectors
from apps.events.models import Event

logger = logging.getLogger("timmy.feed")

T = TypeVar("T")

NUDGE_GROUP = "event_log.commits"
FOLLOW_BATCH = 500
# How long a process about to exit waits for its last nudges to reach Redis.
FLUSH_SECONDS = 2.0


@dataclass
class Skipped:
    count: int
    from_id: int
    to_id: int

    def message(self) -> dict[str, Any]:
        return {"type": "skipped", "count": self.count, "from_id": self.from_id, "to_id": self.to_id}


@dataclass(frozen=True)
class FeedEvent:
    """An event as the feed sends it: the frame is encoded once, however many clients receive it."""

    id: int
    event_type: str
    frame: str

    @classmethod
    def of(cls, event: Event) -> "FeedEvent":
        frame = json.dumps({"type": "event", "payload": selectors.event_payload(event)}, ensure_ascii=False)
        return cls(id=event.id, event_type=event.event_type, frame=frame)


@dataclass(eq=False)
class Subscriber:
    """One client's subscription: its filter and its bounded buffer of events waiting to be sent.

    `offer` never blocks: when the buffer is full, further events are counted into a `Skipped` range
    that takes their place in the order, so a slow client costs the others and the writer nothing.
    """

    event_types: frozenset[str] | None
    buffer_size: int
    # The client already has every event up to this id (it resumed from there): they are neither buffered nor
    # counted as skipped, even when the hub reads them after the subscription began.
    after_id: int = 0
    items: deque[FeedEvent | Skipped] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    buffered_events: int = 0

    def wants(self, event: FeedEvent) -> bool:
        if event.id <= self.after_id:
            return False
        return not self.event_types or event.event_type in self.event_types

    def offer(self, event: FeedEvent) -> None:
        if not self.wants(event):
            return
        if self.buffered_events >= self.buffer_size:
            last = self.items[-1] if self.items else None
            if isinstance(last, Skipped):
                last.count += 1
                last.to_id = event.id
            else:
                self.items.append(Skipped(count=1, from_id=event.id, to_id=event.id))
        else:
            self.items.append(event)
            self.buffered_events += 1
        self.ready.set()

    def take(self) -> FeedEvent | Skipped | None:
        if not self.items:
            self.ready.clear()
            return None
        item = self.items.popleft()
        if not isinstance(item, Skipped):
            self.buffered_events -= 1
        return item


class EventHub:
    """Follows the event table for one web process and fans events out to its subscribers."""

    def __init__(self, *, poll_seconds: float | None = None) -> None:
        self.poll_seconds = poll_seconds
        self.subscribers: set[Subscriber] = set()
        self.connections: Counter[str] = Counter()
        self.last_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._start_lock: asyncio.Lock | None = None
        self._reader: ThreadPoolExecutor | None = None

    # Connections per address (WEBSOCKET_MAX_PER_IP), counted in this process.

    def connection_opened(self, address: str) -> bool:
        if self.connections[address] >= settings.WEBSOCKET_MAX_PER_IP:
            return False
        self.connections[address] += 1
        return True

    def connection_closed(self, address: str) -> None:
        self.connections[address] -= 1
        if self.connections[address] <= 0:
            del self.connections[address]

    async def subscribe(self, subscriber: Subscriber) -> int:
        """Register a subscriber; every event with an id above the returned one will be offered to it."""
        await self._ensure_running()
        self.subscribers.add(subscriber)
        return self.last_id

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    async def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # First use, or a new event loop (tests): nothing of the old loop can run any more.
            self._stop_reader(self._reader)
            self._loop, self._tasks, self.subscribers = loop, [], set()
            self._wake, self._start_lock = asyncio.Event(), asyncio.Lock()
        assert self._start_lock is not None
        async with self._start_lock:
            if self._tasks and not any(task.done() for task in self._tasks):
                return
            for task in self._tasks:
                task.cancel()
            if self._reader is None:
                self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-feed-reader")
            self.last_id = await self._read(selectors.event_latest_id)
            self._tasks = [asyncio.create_task(self._follow(), name="event-feed-follower")]
            if settings.REDIS_URL:
                self._tasks.append(asyncio.create_task(self._listen_for_nudges(), name="event-feed-nudges"))

    async def _follow(self) -> None:
        poll = self.poll_seconds if self.poll_seconds is not None else settings.ACTIVITY_FEED_POLL_SECONDS
        reader = self._reader
        try:
            await self._follow_rounds(poll)
        finally:
            # Cancelled (the server or the event loop is stopping): the reader's connection goes with it.
            self._stop_reader(reader)

    async def _follow_rounds(self, poll: float) -> None:
        assert self._wake is not None
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that lands as
            # the wait completes, and this loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.catch_up()
            except Exception:
                # The database may be locked or restarting; the next round retries from the same id. The reader
                # gives its connection back (on PostgreSQL a broken one is then replaced; SQLite's pool keeps it).
                logger.exception("the event feed could not read the event log; retrying")
                await self._read(connections.close_all)
                await asyncio.sleep(poll)

    async def catch_up(self) -> int:
        """Offer every event committed since the last one seen; return how many there were."""
        seen = 0
        while True:
            events = await self._read(lambda: selectors.events_after(self.last_id, limit=FOLLOW_BATCH))
            for event in events:
                feed_event = FeedEvent.of(event)
                for subscriber in list(self.subscribers):
                    subscriber.offer(feed_event)
                self.last_id = event.id
            seen += len(events)
            if len(events) < FOLLOW_BATCH:
                return seen

    async def _read(self, query: "Callable[[], T]") -> T:
        """Run `query` in the follower's own thread, whose connection stays open between reads (unlike
        database_sync_to_async, which closes the thread's connections before and after each call)."""
        assert self._reader is not None
        return await asyncio.get_running_loop().run_in_executor(self._reader, query)

    def _stop_reader(self, reader: ThreadPoolExecutor | None) -> None:
        """Close the reader thread's connection and end the thread; the hub forgets it if it is still its own."""
        if reader is None:
            return
        reader.submit(connections.close_all)
        reader.shutdown(wait=False)
        if self._reader is reader:
            self._reader = None

    async def _listen_for_nudges(self) -> None:
        assert self._wake is not None
        layer = get_channel_layer()
        while True:
            try:
                channel = await layer.new_channel()
                await layer.group_add(NUDGE_GROUP, channel)
                while True:
                    await layer.receive(channel)
                    self._wake.set()
            except (RedisError, OSError):
                # Redis is down or restarting: polling still delivers, only slower. Try again shortly.
                logger.warning("the event feed lost its channel layer; polling until it is back", exc_info=True)
                await asyncio.sleep(1)


class FeedNudger:
    """Sends "events were committed" to every web process's follower through the channel layer (Redis).

    Writers are sync code (the worker, views, commands). `async_to_sync` would start an event loop, and with
    it a new Redis connection, for every nudge; instead the nudges of this process go through one event loop
    in a daemon thread, whose connections channels-redis keeps. Sending does not wait for Redis: the events
    are committed already, and a lost nudge only means the followers read them at their next poll.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._layer: Any = None
        self._config: Any = None
        self._pending: set[Future[None]] = set()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="event-feed-nudger", daemon=True).start()
                if self._loop is None:
                    # A command that logs an event and exits (run_tool, self_modify) would otherwise lose its
                    # last nudge with the daemon thread: its followers would see the event only at their next poll.
                    atexit.register(self.flush)
                self._loop = loop
            return self._loop

    def _own_layer(self) -> Any:
        # A layer instance of its own: channels-redis ties state to the loop that uses it, and sharing the
        # process's instance between this loop and the server's hung the server's loop at shutdown.
        config = settings.CHANNEL_LAYERS.get(DEFAULT_CHANNEL_LAYER)
        if self._layer is None or self._config is not config:
            self._layer, self._config = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER), config
        return self._layer

    def nudge(self) -> None:
        if DEFAULT_CHANNEL_LAYER not in channel_layers:
            return
        layer = self._own_layer()
        future = asyncio.run_coroutine_threadsafe(
            layer.group_send(NUDGE_GROUP, {"type": "feed.nudge"}), self._running_loop()
        )
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._sent)

    def _sent(self, future: "Future[None]") -> None:
        with self._lock:
            self._pending.discard(future)
        _report_nudge_failure(future)

    def flush(self, timeout: float = FLUSH_SECONDS) -> None:
        """Wait (at most `timeout`) for the nudges still on their way to Redis."""
        with self._lock:
            pending = list(self._pending)
        if pending:
            concurrent.futures.wait(pending, timeout=timeout)

    def schedule(self, using: str) -> None:
        """Nudge once when the current transaction commits, however many events it logged."""
        connection = transaction.get_connection(using)
        if connection.in_atomic_block and any(func == self.nudge for _, func, _ in connection.run_on_commit):
            return
        transaction.on_commit(self.nudge, using=using)


def _report_nudge_failure(future: "Future[None]") -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("could not nudge the event feed; it will poll", exc_info=future.exception())


# One per process, like the process's channel layer connections it reuses.
feed_nudger = FeedNudger()
