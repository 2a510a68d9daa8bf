"""The Lightning backend chosen by LIGHTNING_BACKEND: `dev` (embedded, the default) or `lnd`."""

from functools import cache

from django.conf import settings

from apps.ledger.backends.base import LightningBackend
from apps.ledger.backends.dev import DevBackend
from apps.ledger.backends.lnd import LndBackend


@cache
def _backend(name: str) -> LightningBackend:
    # Never the dev node when LND is configured: its simulated payments must not reach a real ledger.
    if name == "lnd":
        return LndBackend.from_settings()
    return DevBackend()


def get_backend() -> LightningBackend:
    return _backend(settings.LIGHTNING_BACKEND)


def reset_backend() -> None:
    """Forget the backend built from the settings (tests switch LIGHTNING_BACKEND)."""
    _backend.cache_clear()
