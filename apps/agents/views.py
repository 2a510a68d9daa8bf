import shlex
import sys
import uuid
from contextlib import suppress
from functools import partial

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.sessions.backends.base import UpdateError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_POST

from apps.agents import selectors, services, streaming
from apps.agents.forms import ChatForm
from apps.agents.models import ChatMessage, ChatSession
from apps.core.decorators import staff_required

# The conversation the chat page continues, kept in the browser's Django session.
SESSION_KEY = "agents_chat_session_id"
CONVERSATION_NOT_FOUND = "That conversation is not yours or no longer exists. Start a new one."


def terminal_command(user: User | AnonymousUser, session_id: uuid.UUID) -> str:
    """The command that continues a conversation from a terminal, with this server's Python and manage.py, so
    that it works pasted into any shell."""
    manage = str(settings.BASE_DIR / "manage.py")
    username = user.get_username()
    return shlex.join(
        [sys.executable, manage, "timmy", "chat", "--user", username, "--session", str(session_id), "Hi again"]
    )


def _current_session(request: HttpRequest) -> ChatSession | None:
    return selectors.chat_session_for(user=request.user, session_id=request.session.get(SESSION_KEY))


def _posted_session(request: HttpRequest, form: ChatForm) -> tuple[ChatSession | None, bool]:
    """The conversation a valid form continues (the one it names, else the browser session's), and whether a
    conversation it named was not found."""
    chosen = form.cleaned_data["session"]
    session = selectors.chat_session_for(user=request.user, session_id=chosen or request.session.get(SESSION_KEY))
    return session, bool(chosen) and session is None


def _form(session: ChatSession | None) -> ChatForm:
    return ChatForm(initial={"session": session.pk if session else None})


def _page(request: HttpRequest, form: ChatForm, session: ChatSession | None, *, status: int = 200) -> HttpResponse:
    chat_messages = selectors.chat_messages_recent(session=session) if session else []
    context = {
        "form": form,
        "chat_session": session,
        "chat_messages": chat_messages,
        "truncated": len(chat_messages) >= selectors.PAGE_MESSAGES,
        "conversations": selectors.chat_sessions_recent(user=request.user),
        "message_max": services.MESSAGE_MAX,
        "terminal_command": terminal_command(request.user, session.pk) if session else "",
    }
    return render(request, "agents/chat.html", context, status=status)


@staff_required
def chat(request: HttpRequest) -> HttpResponse:
    """The chat page. Its form posts here without JavaScript (the reply comes with the next page); with
    JavaScript, static/js/chat.js posts the same form to `chat_stream` and shows the reply as it is written."""
    if request.method != "POST":
        session = _current_session(request)
        return _page(request, _form(session), session)
    form = ChatForm(request.POST)
    session = None
    if form.is_valid():
        session, missing = _posted_session(request, form)
        if missing:
            form.add_error(None, CONVERSATION_NOT_FOUND)
    if form.is_valid():
        try:
            reply = services.chat_send(
                user=request.user,  # type: ignore[arg-type]  # staff_required: a logged-in user
                message=form.cleaned_data["message"],
                session_id=session.pk if session else None,
            )
        except services.InvalidChatMessage as exc:
            form.add_error("message", str(exc))
        except services.ChatSessionNotFound:
            form.add_error(None, CONVERSATION_NOT_FOUND)
        except services.ChatUnavailable as exc:
            # The message is kept with the reason, and the conversation shows both.
            request.session[SESSION_KEY] = exc.session_id
            return redirect("agents:chat")
        else:
            request.session[SESSION_KEY] = reply.session_id
            return redirect("agents:chat")
    return _page(request, form, session or _current_session(request), status=400)


@staff_required
def chat_session(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    """A past conversation, reopened: the page shows it and its form continues it."""
    session = selectors.chat_session_for(user=request.user, session_id=session_id)
    if session is None:
        raise Http404("No such conversation.")
    return _page(request, _form(session), session)


@staff_required
@require_POST
def chat_new(request: HttpRequest) -> HttpResponse:
    request.session.pop(SESSION_KEY, None)
    return redirect("agents:chat")


# --- the streamed reply (static/js/chat.js) ---


def _problem(status: int, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status)


def _message_html(message: ChatMessage) -> str:
    return render_to_string("agents/_message.html", {"message": message})


def _remember(request: HttpRequest, session_id: str) -> None:
    # The response went out before the reply was written, so the session middleware has saved already (or had
    # nothing to save): the conversation is stored here, also when the user pressed Stop and nobody reads on.
    if request.session.get(SESSION_KEY) != session_id:
        request.session[SESSION_KEY] = session_id
        # Logged out meanwhile: there is no browser session to continue.
        with suppress(UpdateError):
            request.session.save()


def _page_final(request: HttpRequest, user: User, outcome: streaming.Outcome) -> streaming.Event:
    """The last event of the page's stream: the stored messages rendered as the page renders them (the reply as
    sanitised Markdown), which replace the plain text shown while the reply was written, and the conversation's
    id and the list of conversations as they are now."""
    event = streaming.final_event(outcome)
    if isinstance(outcome, services.ChatReply):
        html = {"user_html": _message_html(outcome.user_message), "reply_html": _message_html(outcome.reply_message)}
    elif isinstance(outcome, services.ChatUnavailable):
        html = {"user_html": _message_html(outcome.user_message)}
    else:
        return event
    _remember(request, outcome.session_id)
    session = outcome.user_message.session
    html["session_html"] = render_to_string(
        "agents/_chat_session.html",
        {"chat_session_id": session.pk, "terminal_command": terminal_command(user, session.pk)},
    )
    html["conversations_html"] = render_to_string(
        "agents/_conversations.html",
        {"conversations": selectors.chat_sessions_recent(user=user), "chat_session": session},
    )
    return streaming.Event(event.name, {**event.data, **html})


@require_POST
async def chat_stream(request: HttpRequest) -> HttpResponseBase:
    """The chat form, answered as server-sent events (see apps.agents.streaming): `chunk`s of the reply as the
    model writes it, `failover`s as they happen, then `reply` (or `error`) with the stored messages as HTML.
    Input that cannot be sent is refused before any event, as JSON {"detail"} with 4xx."""
    user = await request.auser()
    if not isinstance(user, User) or not user.is_authenticated:
        return _problem(401, "Log in to chat with Timmy.")
    if not user.is_staff:
        return _problem(403, "Chat needs a staff user.")
    form = ChatForm(request.POST)
    if not form.is_valid():
        errors = [str(error) for errors in form.errors.values() for error in errors]
        return _problem(422, " ".join(errors))
    session, missing = await sync_to_async(_posted_session)(request, form)
    if missing:
        return _problem(404, CONVERSATION_NOT_FOUND)
    events = streaming.chat_events(
        user=user,
        message=form.cleaned_data["message"],
        session_id=session.pk if session else None,
        final=partial(_page_final, request, user),
    )
    return StreamingHttpResponse(events, content_type=streaming.CONTENT_TYPE, headers=streaming.HEADERS)
