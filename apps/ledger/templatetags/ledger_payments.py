from django import template

from apps.ledger import selectors

register = template.Library()


@register.simple_tag
def payments_waiting() -> list[selectors.WaitingPayment]:
    """The ledger page's waiting payments, for templates/ledger/_waiting.html (the page's view is shared with other
    regions, so the partial fetches its own)."""
    return selectors.payments_waiting()
