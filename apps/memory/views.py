from typing import Any

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.text import Truncator
from django.views.decorators.http import require_POST, require_safe

from apps.core.decorators import staff_required
from apps.core.types import HtmxHttpRequest
from apps.memory import selectors, services
from apps.memory.forms import FactForm, ForgetForm, MemorySearchForm
from apps.memory.models import MemoryEntry

SEARCH_LIMIT = 10
PAGE_SOURCE = "page"
# A duplicate is shown in the message; a near duplicate may be a long conversation.
KNOWN_PREVIEW = 300


def _page_context(
    request: HtmxHttpRequest,
    *,
    fact_form: FactForm | None = None,
    known_id: int | None = None,
    forget_id: int | None = None,
    forget_error: str = "",
) -> dict[str, Any]:
    facts = selectors.facts_visible(request.user)
    return {
        "counts_by_type": (counts := selectors.memory_counts_by_type(request.user)),
        "total": sum(counts.values()),
        "counts_by_agent": selectors.memory_counts_by_agent(request.user),
        "recent": selectors.memories_recent(request.user),
        "facts": facts,
        "facts_truncated": len(facts) < counts[MemoryEntry.ContextType.FACT],
        "fact_form": fact_form or FactForm(),
        "known_id": known_id,
        "forget_id": forget_id,
        "forget_error": forget_error,
        "forget_error_unlisted": bool(forget_error) and forget_id not in {fact.pk for fact in facts},
    }


def _page(
    request: HtmxHttpRequest,
    search_form: MemorySearchForm,
    *,
    hits: list[services.Hit] | None = None,
    status: int = 200,
    **extra: Any,
) -> HttpResponse:
    context = {"search_form": search_form, "hits": hits, **_page_context(request, **extra)}
    return render(request, "memory/index.html", context, status=status)


def _after_fact_change(request: HtmxHttpRequest, *, invalid: bool = False, **extra: Any) -> HttpResponse:
    """htmx: the facts section again, with the messages, and the counts and recent memories out of band (422 when
    the input was bad). Otherwise a redirect to the page, or the page itself with the error (400)."""
    if request.htmx:
        context = _page_context(request, **extra)
        return render(request, "memory/_facts_changed.html", context, status=422 if invalid else 200)
    if invalid:
        return _page(request, MemorySearchForm(), status=400, **extra)
    anchor = f"#memory-{extra['known_id']}" if extra.get("known_id") else "#memory-facts"
    return redirect(reverse("memory:index") + anchor)


@staff_required
@require_safe
def index(request: HtmxHttpRequest) -> HttpResponse:
    """The page; with a query, its search results too (htmx: the results alone)."""
    form = MemorySearchForm(request.GET or None)
    hits: list[services.Hit] | None = None
    status = 200
    if form.is_bound:
        if form.is_valid():
            data = form.cleaned_data
            agent = data["agent"]
            hits = services.search_memories(
                data["q"],
                user=request.user,
                agent_id=agent.pk if agent else None,
                context_type=data["context_type"] or None,
                limit=SEARCH_LIMIT,
                all_users=data["everyone"] and request.user.is_staff,
            )
            selectors.with_relations([hit.memory for hit in hits])
        else:
            status = 400
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "memory/_results.html", {"search_form": form, "hits": hits}, status=status)
    return _page(request, form, hits=hits, status=status)


@staff_required
@require_POST
def fact_add(request: HtmxHttpRequest) -> HttpResponse:
    form = FactForm(request.POST)
    if form.is_valid():
        shared = form.cleaned_data["shared"]
        try:
            stored = services.store_memory(
                content=form.cleaned_data["content"],
                context_type=MemoryEntry.ContextType.FACT,
                source=PAGE_SOURCE,
                owner=None if shared else request.user,
            )
        except services.InvalidMemory as exc:
            form.add_error("content", str(exc))
        else:
            memory = stored.memory
            if stored.created:
                who = "everyone sees it" if shared else "only you see it"
                messages.success(request, f"Remembered fact {memory.pk} ({who}).")
            else:
                how = "the same words" if stored.duplicate == "exact" else "nearly the same meaning"
                messages.info(
                    request,
                    f"Already known, with {how}, as {memory.context_type} {memory.pk}, so not stored again: "
                    f"“{Truncator(memory.content).chars(KNOWN_PREVIEW)}”",
                )
            return _after_fact_change(request, known_id=memory.pk)
    return _after_fact_change(request, fact_form=form, invalid=True)


@staff_required
@require_POST
def forget(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    if not selectors.memory_exists_for(request.user, memory_id=pk):
        raise Http404(f"Memory {pk} not found.")
    form = ForgetForm(request.POST)
    if form.is_valid():
        try:
            memory = services.forget(memory_id=pk, actor=request.user, reason=form.cleaned_data["reason"])
        except services.MemoryNotFound as exc:
            raise Http404(str(exc)) from exc
        except services.MemoryAlreadyForgotten:
            messages.info(request, f"Memory {pk} was already forgotten.")
        except services.InvalidMemory as exc:
            return _after_fact_change(request, forget_id=pk, forget_error=str(exc), invalid=True)
        else:
            messages.success(
                request,
                f"Forgot memory {pk} (“{Truncator(memory.content).chars(80)}”). Reason: {memory.deleted_reason}",
            )
        return _after_fact_change(request)
    error = " ".join(str(message) for message in form.errors["reason"])
    return _after_fact_change(request, forget_id=pk, forget_error=error, invalid=True)
