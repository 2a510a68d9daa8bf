from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.core.decorators import staff_required
from apps.core.types import HtmxHttpRequest
from apps.events import registry
from apps.events.forms import EventFilterForm
from apps.events.selectors import EventFilter, agent_lookup, event_latest_id, events_latest, events_page
from apps.swarm.models import Agent

PAGE_SIZE = 50
# The live page opens with this many events rendered; static/js/live.js then keeps up to LIVE_LIST_MAX.
LIVE_INITIAL = 50
LIVE_LIST_MAX = 200


@staff_required
def event_list(request: HtmxHttpRequest) -> HttpResponse:
    form = EventFilterForm(request.GET or None)
    context: dict[str, object] = {
        "form": form,
        "type_groups": list(registry.grouped()),
        "type_listed": registry.is_listed(request.GET.get("event_type", "").strip()),
    }
    status = 200
    if form.is_bound and not form.is_valid():
        context.update(events=[], next_before_id=None)
        status = 400
    else:
        data = form.cleaned_data if form.is_bound else {}
        agent = agent_lookup(data.get("agent_id") or "")
        filters = EventFilter(
            event_type=data.get("event_type") or "",
            task_id=(data.get("task_id") or "").strip(),
            agent_id=agent.agent_id,
            since=data.get("since"),
            until=data.get("until"),
        )
        page = events_page(filters=filters, before_id=data.get("before"), limit=PAGE_SIZE)
        context.update(
            events=page.events,
            next_before_id=page.next_before_id,
            paged=data.get("before") is not None,
            agent_names={e.agent_id: e.agent_name for e in page.events if e.agent_name},
            unknown_agent="" if agent.found else agent.agent_id,
            query=_query_without_before(request),
        )
    template = "events/_results.html" if request.htmx else "events/list.html"
    return render(request, template, context, status=status)


def _query_without_before(request: HtmxHttpRequest) -> str:
    params = request.GET.copy()
    params.pop("before", None)
    return params.urlencode()


@staff_required
def live(request: HttpRequest) -> HttpResponse:
    """The live activity feed: the newest events at once, then static/js/live.js follows /ws/events/ from `since`."""
    event_type = request.GET.get("event_type", "")
    if not registry.is_listed(event_type):
        event_type = ""
    # Every agent (a swarm is a handful): the script names the agents of events that do not carry the name.
    agents = list(Agent.objects.only("id", "name").order_by("name"))
    names = {str(agent.pk): agent.name for agent in agents}
    if event_type:
        # `since` is the newest id of the whole log, read first: every event of the type up to it is either
        # rendered here or older than the rendered ones, and the subscription resumes right after it.
        since = event_latest_id()
        filters = EventFilter(event_type=event_type)
        events = events_page(filters=filters, before_id=since + 1, limit=LIVE_INITIAL, agent_names=names).events
    else:
        events = events_latest(limit=LIVE_INITIAL, agent_names=names)
        since = events[0].id if events else 0
    return render(
        request,
        "events/live.html",
        {
            "events": events,
            "since": since,
            "limit": LIVE_LIST_MAX,
            "type_groups": list(registry.grouped()),
            "selected_type": event_type,
            "agents": agents,
            "agent_names": names,
        },
    )
