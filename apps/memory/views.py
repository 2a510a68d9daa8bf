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
        "can_read_everyone": services.can_read_private(request.user),
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
    everyone: bool = False,
    everyone_refused: str = "",
    **extra: Any,
) -> HttpResponse:
    context = {
        "search_form": search_form,
        "hits": hits,
        "everyone": everyone,
        "everyone_refused": everyone_refused,
        **_page_context(request, **extra),
    }
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
    """The page; with a query, its search results too (htmx: the results alone).

    everyone=on from a user without the permission to read other users' private memories (an old link, a shared
    bookmark) searches their own scope, and the results say so: a search page that answers 403 would only hide why.
    """
    form = MemorySearchForm(request.GET or None)
    hits: list[services.Hit] | None = None
    status = 200
    everyone, everyone_refused = False, ""
    if form.is_bound:
        if form.is_valid():
            data = form.cleaned_data
            agent = data["agent"]
            everyone = data["everyone"] and services.can_read_private(request.user)
            if data["everyone"] and not everyone:
                everyone_refused = services.private_permission_refusal()
            hits = services.search_memories(
                data["q"],
                user=request.user,
                agent_id=agent.pk if agent else None,
                context_type=data["context_type"] or None,
                limit=SEARCH_LIMIT,
                all_users=everyone,
            )
            selectors.with_relations([hit.memory for hit in hits])
        else:
            status = 400
    if request.htmx and not request.htmx.history_restore_request:
        context = {"search_form": form, "hits": hits, "everyone": everyone, "everyone_refused": everyone_refused}
        return render(request, "memory/_results.html", context, status=status)
    return _page(request, form, hits=hits, status=status, everyone=everyone, everyone_refused=everyone_refused)


@staff_required
@require_POST
def fact_add(request: HtmxHttpRequest) -> HttpResponse:
    form = FactForm(request.POST)
    if form.is_valid():
        # Public is "shared, and strangers too": ticking it alone cannot mean a private public fact.
        public = form.cleaned_data["public"]
        shared = form.cleaned_data["shared"] or public
        try:
            stored = services.store_memory(
                content=form.cleaned_data["content"],
                context_type=MemoryEntry.ContextType.FACT,
                source=PAGE_SOURCE,
                owner=None if shared else request.user,
                public=public,
            )
        except services.InvalidMemory as exc:
            form.add_error("content", str(exc))
        else:
            memory = stored.memory
            if stored.created:
                who = "only you see it"
                if shared:
                    who = "everyone sees it; public: the paid chat may use it" if public else "everyone sees it"
                messages.success(request, f"Remembered fact {memory.pk} ({who}).")
            else:
                how = "the same words" if stored.duplicate == "exact" else "nearly the same meaning"
                published = " It is public now: the paid chat may use it." if stored.published else ""
                messages.info(
                    request,
                    f"Already known, with {how}, as {memory.context_type} {memory.pk}, so not stored again: "
                    f"“{Truncator(memory.content).chars(KNOWN_PREVIEW)}”{published}",
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
