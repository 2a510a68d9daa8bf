from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render

from apps.core.decorators import staff_required
from apps.core.selectors import tasks_waiting_without_worker, workers_alive_count
from apps.core.types import HtmxHttpRequest
from apps.events.selectors import events_for_task
from apps.ledger.selectors import task_payment
from apps.swarm import selectors, services
from apps.swarm.forms import TaskPostForm
from apps.swarm.models import Task


def _board_context() -> dict[str, object]:
    return {
        "auctions": selectors.auctions_open(),
        "tasks_by_status": selectors.tasks_by_status(),
        "task_counts": selectors.task_counts(),
        "agents": selectors.agents_with_wins(),
        "tasks_waiting": tasks_waiting_without_worker(),
    }


@staff_required
def index(request: HtmxHttpRequest) -> HttpResponse:
    form = TaskPostForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            task = services.task_post(description=form.cleaned_data["description"], posted_by=request.user)
        except services.InvalidTask as exc:
            form.add_error("description", str(exc))
        else:
            bids = task.bids.count()
            messages.success(
                request,
                f"Task {task.pk} posted; {bids} bid(s) so far. The auction closes in {settings.AUCTION_SECONDS} s.",
            )
            return redirect("swarm:index")
    if request.htmx and request.method == "GET":
        return render(request, "swarm/_board.html", _board_context())
    status = 400 if form.is_bound and not form.is_valid() else 200
    return render(request, "swarm/index.html", {"form": form, **_board_context()}, status=status)


@staff_required
def task_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    task = selectors.task_with_bids(pk)
    if task is None:
        raise Http404(f"Task {pk} not found.")
    waiting_without_worker = task.status not in Task.TERMINAL and not workers_alive_count()
    return render(
        request,
        "swarm/task.html",
        {
            "task": task,
            "events": events_for_task(pk),
            "waiting_without_worker": waiting_without_worker,
            "payment": task_payment(task),
        },
    )
