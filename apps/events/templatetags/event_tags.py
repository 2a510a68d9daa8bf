import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def event_json(value: Any) -> str:
    """An event's data in full, on one line, keys sorted: as static/js/live.js writes it (its compactJson)."""
    # Autoescaping still applies to the result: this only shapes the text.
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)
