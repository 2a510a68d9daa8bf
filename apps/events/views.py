from django.http import HttpResponse
from django.shortcuts import render

from apps.core.decorators import staff_required
from apps.core.types import HtmxHttpRequest
from apps.events.forms import EventFilterForm
from apps.events.selectors import EventFilter, events_page
from apps.swarm.selectors import agent_names

PAGE_SIZE = 50


@staff_required
def event_list(request: HtmxHttpRequest) -> HttpResponse:
    form = EventFilterForm(request.GET or None)
    context: dict[str, object] = {"form": form, "event_types": EventFilterForm.type_choices}
    status = 200
    if form.is_bound and not form.is_valid():
        context.update(events=[], next_before_id=None)
        status = 400
    else:
        data = form.cleaned_data if form.is_bound else {}
        filters = EventFilter(
            event_type=data.get("event_type") or "",
            task_id=(data.get("task_id") or "").strip(),
            agent_id=(data.get("agent_id") or "").strip(),
            since=data.get("since"),
            until=data.get("until"),
        )
        page = events_page(filters=filters, before_id=data.get("before"), limit=PAGE_SIZE)
        context.update(
            events=page.events,
            next_before_id=page.next_before_id,
            paged=data.get("before") is not None,
            agent_names=agent_names({e.agent_id for e in page.events if e.agent_id}),
            query=_query_without_before(request),
        )
    template = "events/_results.html" if request.htmx else "events/list.html"
    return render(request, template, context, status=status)


def _query_without_before(request: HtmxHttpRequest) -> str:
    params = request.GET.copy()
    params.pop("before", None)
    return params.urlencode()
