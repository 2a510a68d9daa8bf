from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.agents import selectors, services
from apps.agents.forms import ChatForm
from apps.agents.models import ChatMessage, ChatSession
from apps.core.decorators import staff_required
from apps.core.types import HtmxHttpRequest

# The conversation the chat page continues, kept in the browser's Django session.
SESSION_KEY = "agents_chat_session_id"


def _current_session(request: HtmxHttpRequest) -> ChatSession | None:
    return selectors.chat_session_for(user=request.user, session_id=request.session.get(SESSION_KEY))


def _page(request: HtmxHttpRequest, form: ChatForm, session: ChatSession | None, *, status: int = 200) -> HttpResponse:
    chat_messages = selectors.chat_messages_recent(session=session) if session else []
    context = {
        "form": form,
        "chat_session": session,
        "chat_messages": chat_messages,
        "truncated": len(chat_messages) >= selectors.PAGE_MESSAGES,
    }
    return render(request, "agents/chat.html", context, status=status)


def _exchange(request: HtmxHttpRequest, session_id: str, *chat_messages: ChatMessage) -> HttpResponse:
    """htmx: a fresh form in place of the one sent, and the new messages appended to the conversation."""
    context = {"form": ChatForm(), "chat_session_id": session_id, "chat_messages": chat_messages}
    return render(request, "agents/_exchange.html", context)


@staff_required
def chat(request: HtmxHttpRequest) -> HttpResponse:
    session = _current_session(request)
    if request.method != "POST":
        return _page(request, ChatForm(), session)
    form = ChatForm(request.POST)
    if form.is_valid():
        try:
            reply = services.chat_send(
                user=request.user,  # type: ignore[arg-type]  # staff_required: a logged-in user
                message=form.cleaned_data["message"],
                session_id=session.pk if session else None,
            )
        except services.InvalidChatMessage as exc:
            form.add_error("message", str(exc))
        except services.ChatUnavailable as exc:
            # The message is kept with the reason, and the conversation shows both.
            request.session[SESSION_KEY] = exc.session_id
            if request.htmx:
                return _exchange(request, exc.session_id, exc.user_message)
            return redirect("agents:chat")
        else:
            request.session[SESSION_KEY] = reply.session_id
            if request.htmx:
                return _exchange(request, reply.session_id, reply.user_message, reply.reply_message)
            return redirect("agents:chat")
    if request.htmx:
        return render(request, "agents/_chat_form.html", {"form": form}, status=422)
    return _page(request, form, session, status=400)


@staff_required
@require_POST
def chat_new(request: HtmxHttpRequest) -> HttpResponse:
    request.session.pop(SESSION_KEY, None)
    return redirect("agents:chat")
