from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.errors import HttpError

from apps.agents import services
from apps.core.auth import require_staff

router = Router(tags=["chat"])


class ChatIn(Schema):
    message: str = Field(..., min_length=1, max_length=services.MESSAGE_MAX)
    session_id: str | None = Field(None, description="Continue this conversation; a new one without it.")


class ChatOut(Schema):
    response: str
    provider: str
    model: str
    session_id: str


@router.post(
    "/chat",
    response=ChatOut,
    summary="Chat with Timmy",
    description="The reply comes from the first LLM provider that answers. 404 for a session that is not yours; "
    "503 with each provider's reason when none answers (your message is kept in the conversation).",
)
def chat(request: HttpRequest, payload: ChatIn) -> services.ChatReply:
    user = require_staff(request)
    try:
        return services.chat_send(user=user, message=payload.message, session_id=payload.session_id)
    except services.InvalidChatMessage as exc:
        raise HttpError(422, str(exc)) from exc
    except services.ChatSessionNotFound as exc:
        raise HttpError(404, str(exc)) from exc
    except services.ChatUnavailable as exc:
        raise HttpError(503, str(exc)) from exc
