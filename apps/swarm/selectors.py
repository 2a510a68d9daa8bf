from django.db.models import Count, Prefetch, Q, QuerySet

from apps.swarm.models import Agent, Bid, Task


def agents_with_wins() -> QuerySet[Agent]:
    return Agent.objects.annotate(
        wins=Count("assigned_tasks", filter=~Q(assigned_tasks__status=Task.Status.FAILED)),
    ).order_by("name")


def auctions_open() -> list[Task]:
    bids = Prefetch("bids", queryset=Bid.objects.select_related("agent").order_by("amount_sats", "created_at", "id"))
    return list(
        Task.objects.filter(status=Task.Status.BIDDING).prefetch_related(bids).order_by("auction_closes_at")[:50]
    )


def tasks_by_status(*, limit: int = 20) -> dict[str, list[Task]]:
    grouped: dict[str, list[Task]] = {}
    for status in (Task.Status.ASSIGNED, Task.Status.RUNNING, Task.Status.COMPLETED, Task.Status.FAILED):
        grouped[status] = list(
            Task.objects.filter(status=status).select_related("assigned_agent").order_by("-id")[:limit]
        )
    return grouped


def task_counts() -> dict[str, int]:
    rows = Task.objects.values("status").annotate(n=Count("id"))
    counts = {status: 0 for status in Task.Status.values}
    counts.update({row["status"]: row["n"] for row in rows})
    return counts


def task_with_bids(task_id: int) -> Task | None:
    bids = Prefetch("bids", queryset=Bid.objects.select_related("agent").order_by("amount_sats", "created_at", "id"))
    return Task.objects.select_related("assigned_agent", "posted_by").prefetch_related(bids).filter(pk=task_id).first()


def tasks_list(*, status: str | None = None, limit: int = 50) -> list[Task]:
    qs = Task.objects.select_related("assigned_agent").order_by("-id")
    if status:
        qs = qs.filter(status=status)
    return list(qs[:limit])


def agent_names(agent_ids: set[str]) -> dict[str, str]:
    ids = [int(i) for i in agent_ids if i.isdigit()]
    return {str(pk): name for pk, name in Agent.objects.filter(pk__in=ids).values_list("pk", "name")}
