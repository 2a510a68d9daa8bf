from functools import cache
from typing import Any

from django.http import HttpRequest

from apps.upgrades.selectors import upgrade_pending_count

# (label, url name) of every page in the navigation, in order.
NAVIGATION = [
    ("Home", "home"),
    ("Chat", "agents:chat"),
    ("Swarm", "swarm:index"),
    ("Events", "events:list"),
    ("Live", "events:live"),
    ("Ledger", "ledger:index"),
    ("Memory", "memory:index"),
    ("Upgrades", "upgrades:queue"),
    ("Router", "providers:status"),
    ("Usage", "providers:usage"),
]


def navigation(request: HttpRequest) -> dict[str, Any]:
    match = getattr(request, "resolver_match", None)
    current = match.view_name if match else ""
    context: dict[str, Any] = {"navigation": NAVIGATION, "nav_current": current}
    user = getattr(request, "user", None)
    if user is not None and user.is_staff:
        # A callable: the template calls it, so the COUNT runs only on pages that show the navigation (not the
        # admin's, not htmx partials), and once per render.
        context["nav_pending_upgrades"] = cache(upgrade_pending_count)
    return context
