from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field, Router, Schema
from ninja.errors import HttpError

from apps.agents import selectors, services, streaming
from apps.core.api_contract import VISIBLE_TEXT, errors
from apps.core.auth import require_staff
from apps.events.services import clean_multiline_text

router = Router(tags=["chat"])


class ChatIn(Schema):
    message: str = Field(..., min_length=1, max_length=services.MESSAGE_MAX, json_schema_extra=VISIBLE_TEXT)
    session_id: str | None = Field(None, description="Continue this conversation; a new one without it.")
    stream: bool = Field(
        False,
        strict=True,
        description="Answer with `text/event-stream`: the reply as the model writes it, then who answered "
        "(see the 200 response).",
    )


class ChatOut(Schema):
    response: str
    provider: str
    model: str
    session_id: str


STREAM_EVENTS = """With `"stream": true`, server-sent events, each `event: NAME` and one `data:` line of JSON:

- `chunk` `{"text"}`: the next piece of the reply, as the model writes it.
- `failover` `{"from", "to", "reason"}`: a provider failed and the next one is tried (before the first chunk).
- `reply` `{"response", "provider", "model", "session_id", "tokens_in", "tokens_out", "latency_ms", "stopped"}`:
  the whole reply as stored, and the last event.
- `error` `{"status", "detail", "session_id"?}`: no reply, and the last event; `status` is what the same request
  would get without streaming (503 when no provider answered: your message is kept in conversation
  `session_id`).

Hanging up stops the model; what it wrote until then is stored, marked stopped. Input errors (401, 403, 404, 422)
come before any event, as JSON like the unstreamed form."""

STREAM_EXAMPLE = (
    'event: failover\ndata: {"from": "ollama", "to": "embedded", "reason": "ollama: cannot connect"}\n\n'
    'event: chunk\ndata: {"text": "The capital"}\n\n'
    'event: chunk\ndata: {"text": " of France is Paris."}\n\n'
    'event: reply\ndata: {"response": "The capital of France is Paris.", "provider": "embedded", '
    '"model": "SmolLM2-135M-Instruct", "session_id": "5b0c…", "tokens_in": 154, "tokens_out": 7, '
    '"latency_ms": 640, "stopped": false}\n\n'
)


def _event(name: str, fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    data = {"type": "object", "properties": fields, "required": required}
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
    }


TEXT: dict[str, Any] = {"type": "string"}
COUNT: dict[str, Any] = {"type": ["integer", "null"]}
# One event of the stream (Open API 3.1 describes an event stream by its events): its name and its `data` line.
STREAM_EVENT_SCHEMA = {
    "description": STREAM_EVENTS,
    "oneOf": [
        _event("chunk", {"text": TEXT}, ["text"]),
        _event("failover", {"from": TEXT, "to": TEXT, "reason": TEXT}, ["from", "to", "reason"]),
        _event(
            "reply",
            {
                "response": TEXT,
                "provider": TEXT,
                "model": TEXT,
                "session_id": TEXT,
                "tokens_in": COUNT,
                "tokens_out": COUNT,
                "latency_ms": COUNT,
                "stopped": {"type": "boolean"},
            },
            ["response", "provider", "model", "session_id", "stopped"],
        ),
        _event(
            "error",
            {"status": {"type": "integer"}, "detail": TEXT, "session_id": TEXT, "retry_after": {"type": "integer"}},
            ["status", "detail"],
        ),
    ],
}


@router.post(
    "/chat",
    response={200: ChatOut, **errors(400, 404)},
    summary="Chat with Timmy",
    description="The reply comes from the first LLM provider that answers. 404 for a session that is not yours; "
    "503 with each provider's reason when none answers (your message is kept in the conversation). "
    'With `"stream": true` the reply comes as server-sent events while the model writes it.',
    openapi_extra={
        "responses": {
            200: {
                "description": 'The reply; with `"stream": true`, the events below.',
                "content": {
                    streaming.CONTENT_TYPE: {
                        "schema": STREAM_EVENT_SCHEMA,
                        "example": STREAM_EXAMPLE,
                    }
                },
            }
        }
    },
)
def chat(request: HttpRequest, payload: ChatIn) -> services.ChatReply | StreamingHttpResponse:
    user = require_staff(request)
    if payload.stream:
        return _chat_stream(user, payload)
    try:
        return services.chat_send(user=user, message=payload.message, session_id=payload.session_id)
    except services.InvalidChatMessage as exc:
        raise HttpError(422, str(exc)) from exc
    except services.ChatSessionNotFound as exc:
        raise HttpError(404, str(exc)) from exc
    except services.ChatUnavailable as exc:
        raise HttpError(503, str(exc)) from exc


def _chat_stream(user: User, payload: ChatIn) -> StreamingHttpResponse:
    # What chat_send would refuse at once is refused here, with its status, before the events start.
    if not clean_multiline_text(payload.message).strip():
        raise HttpError(422, "The message is empty.")
    if payload.session_id and selectors.chat_session_for(user=user, session_id=payload.session_id) is None:
        raise HttpError(404, f"Chat session {payload.session_id} not found.")
    events = streaming.chat_events(user=user, message=payload.message, session_id=payload.session_id)
    return StreamingHttpResponse(events, content_type=streaming.CONTENT_TYPE, headers=streaming.HEADERS)
