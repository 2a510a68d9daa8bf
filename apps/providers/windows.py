"""Each provider's context window: the admin's value, else what the server says, else DEFAULT_CONTEXT_TOKENS.

What a server says is asked once and kept in this process for a while (a request of its own costs more than the
router), and written on the provider's metrics row, so the status page shows it without asking anyone.
"""

import threading
import time

from django.conf import settings

from apps.providers import clients
from apps.providers.models import Provider, ProviderMetrics

# How long what a server said is trusted, and how soon to ask again a server that did not answer.
KNOWN_SECONDS = 600
UNKNOWN_SECONDS = 30


class Source:
    ADMIN = "admin"
    SERVER = "server"
    ERROR = "server's error"
    DEFAULT = "default"


_lock = threading.Lock()
_known: dict[tuple[object, ...], tuple[int, str, float]] = {}
# How far our token estimates fell short for a provider (its tokenizer reads more tokens than we guess), learnt
# from its "too long" errors, so that the next prompt fits the first time.
_scales: dict[tuple[object, ...], float] = {}


def _key(provider: Provider) -> tuple[object, ...]:
    return (provider.pk, provider.kind, provider.base_url, provider.model)


def _remember(provider: Provider, tokens: int, source: str, seconds: float) -> int:
    with _lock:
        _known[_key(provider)] = (tokens, source, time.monotonic() + seconds)
    # Only when it changed: this runs on the router's path.
    ProviderMetrics.objects.filter(provider=provider).exclude(context_tokens=tokens, context_source=source).update(
        context_tokens=tokens, context_source=source
    )
    return tokens


def window_for(provider: Provider) -> int:
    if provider.context_tokens:
        return provider.context_tokens
    with _lock:
        known = _known.get(_key(provider))
    if known is not None and known[2] > time.monotonic():
        return known[0]
    try:
        tokens = clients.client_for(provider).context_window()
    except clients.ProviderCallError:
        tokens = None
    if tokens:
        return _remember(provider, tokens, Source.SERVER, KNOWN_SECONDS)
    return _remember(provider, settings.DEFAULT_CONTEXT_TOKENS, Source.DEFAULT, UNKNOWN_SECONDS)


def scale_for(provider: Provider) -> float:
    with _lock:
        return _scales.get(_key(provider), 1.0)


def learned(provider: Provider, *, tokens: int | None, scale: float) -> int:
    """What a "context length exceeded" error taught: the window the server named (the admin's value still wins)
    and how much to scale our estimates for it. Returns the window to fit to now."""
    with _lock:
        _scales[_key(provider)] = scale
    if provider.context_tokens:
        return provider.context_tokens
    if tokens is None:
        return window_for(provider)
    return _remember(provider, tokens, Source.ERROR, KNOWN_SECONDS)


def forget() -> None:
    """Ask every server again (tests, and after an operator's edit is not enough: the key includes the model)."""
    with _lock:
        _known.clear()
        _scales.clear()
