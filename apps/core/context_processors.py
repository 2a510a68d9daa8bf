from typing import Any

from django.http import HttpRequest

# (label, url name) of every page in the navigation, in order.
NAVIGATION = [
    ("Home", "home"),
    ("Chat", "agents:chat"),
    ("Swarm", "swarm:index"),
    ("Events", "events:list"),
    ("Live", "events:live"),
    ("Ledger", "ledger:index"),
    ("Memory", "memory:index"),
    ("Upgrades", "upgrades"),
    ("Router", "providers:status"),
]


def navigation(request: HttpRequest) -> dict[str, Any]:
    match = getattr(request, "resolver_match", None)
    current = match.view_name if match else ""
    return {"navigation": NAVIGATION, "nav_current": current}
