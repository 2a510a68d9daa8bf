"""Timmy's reply as server-sent events, for the chat page and `POST /api/v1/chat` with "stream": true.

`chat_send` blocks for as long as the model writes, so it runs in a thread of its own; each piece it hands to
`on_chunk` crosses to the event loop through an asyncio queue, and the loop writes it out at once. The event loop
itself never waits on the model or the database.

When the client goes away (the Stop button aborts the fetch, a script hangs up), Django cancels the streaming
response: the generator below is closed, which sets the stop flag that `chat_send` asks after each piece, and
generation really stops (the connection to the model is closed). What came until then is stored, marked stopped.
"""

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import connections

from apps.agents import services
from apps.agents.services import ChatError, ChatReply
from apps.core import database

logger = logging.getLogger("timmy.agents")

CONTENT_TYPE = "text/event-stream"
# No caching, and no buffering by a reverse proxy (nginx reads X-Accel-Buffering): each event goes out as it is.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Outcome = ChatReply | ChatError


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any]

    def encode(self) -> bytes:
        # json.dumps escapes newlines, so the data is always one `data:` line.
        return f"event: {self.name}\ndata: {json.dumps(self.data)}\n\n".encode()


def reply_data(reply: ChatReply) -> dict[str, Any]:
    message = reply.reply_message
    return {
        "response": reply.response,
        "provider": reply.provider,
        "model": reply.model,
        "session_id": reply.session_id,
        "tokens_in": message.tokens_in,
        "tokens_out": message.tokens_out,
        "latency_ms": message.latency_ms,
        "stopped": reply.stopped,
    }


def error_data(error: ChatError) -> dict[str, Any]:
    """The final event of a chat that got no reply, with the HTTP status the same request would get unstreamed."""
    if isinstance(error, services.ChatUnavailable):
        return {"status": 503, "detail": error.reason, "session_id": error.session_id}
    if isinstance(error, services.ChatSessionNotFound):
        return {"status": 404, "detail": str(error)}
    return {"status": 422, "detail": str(error)}


def final_event(outcome: Outcome) -> Event:
    if isinstance(outcome, ChatReply):
        return Event("reply", reply_data(outcome))
    return Event("error", error_data(outcome))


class _Failed:
    """chat_send raised something unexpected: the stream ends with an error event, the traceback goes to the log."""


async def chat_events(
    *,
    user: User,
    message: str,
    session_id: str | uuid.UUID | None,
    final: Callable[[Outcome], Event] | None = None,
) -> AsyncIterator[bytes]:
    """The encoded events of one chat: `chunk` {text} for each piece of the reply, `failover` {from, to, reason}
    when a provider fails and the next is tried, then `reply` or `error` as `final` makes it from the outcome.

    `final` runs in the chat's thread, so it may use the database and render templates; it also runs when the
    client has gone away, and then its event is dropped.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | Event | _Failed] = asyncio.Queue()
    stop = threading.Event()

    def put(item: str | Event | _Failed) -> None:
        # Once the response is closed nobody reads the queue, and the loop may be gone with it.
        if not stop.is_set():
            with suppress(RuntimeError):  # the loop was closed between the check and the call
                loop.call_soon_threadsafe(queue.put_nowait, item)

    def failover(provider: str, next_provider: str, reason: str) -> None:
        put(Event("failover", {"from": provider, "to": next_provider, "reason": reason}))

    def run() -> None:
        try:
            try:
                outcome: Outcome = services.chat_send(
                    user=user,
                    message=message,
                    session_id=session_id,
                    on_chunk=put,
                    should_stop=stop.is_set,
                    on_failover=failover,
                )
            except ChatError as exc:
                outcome = exc
            put((final or final_event)(outcome))
        except Exception as exc:
            kind = database.unavailable(exc)
            if kind is None:
                logger.exception("chat stream failed")
                put(_Failed())
            else:
                # As the unstreamed request would answer: 503, try again later; nothing was stored.
                logger.warning("chat stream: database %s: %s", kind, exc)
                detail = {"status": 503, "detail": database.message(kind), "retry_after": database.retry_after()}
                put(Event("error", detail))
        finally:
            connections.close_all()  # this thread's own connections

    threading.Thread(target=run, name="chat-stream", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if isinstance(item, str):
                yield Event("chunk", {"text": item}).encode()
            elif isinstance(item, Event):
                yield item.encode()
                if item.name != "failover":
                    return
            else:
                yield Event("error", {"status": 500, "detail": "The chat failed; the server log says why."}).encode()
                return
    finally:
        # Reached when the reply is complete and when the client went away (Django cancels the response then).
        stop.set()
