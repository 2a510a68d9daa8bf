from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from apps.core.decorators import staff_required
from apps.core.selectors import tasks_waiting_without_worker, workers_recent
from apps.events.selectors import events_latest
from apps.ledger.services import get_balance
from apps.providers.selectors import providers_health
from apps.swarm.selectors import agents_with_wins, task_counts
from apps.upgrades.selectors import upgrade_pending_count


@staff_required
def home(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    workers = [(w, w.is_alive(now)) for w in workers_recent()]
    pending_upgrades = upgrade_pending_count()
    return render(
        request,
        "core/home.html",
        {
            "workers": workers,
            "any_worker_alive": any(alive for _, alive in workers),
            "task_counts": task_counts(),
            "tasks_waiting": tasks_waiting_without_worker(),
            "agents": agents_with_wins(),
            "events": events_latest(limit=10),
            "providers": providers_health(),
            "balance": get_balance(),
            "pending_upgrades": pending_upgrades,
            # The navigation's count too (it shadows the context processor's, which would count them again).
            "nav_pending_upgrades": pending_upgrades,
        },
    )
