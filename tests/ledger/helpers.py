from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from apps.ledger import services
from apps.ledger.backends import get_backend, reset_backend
from apps.ledger.backends.dev import DevBackend
from apps.ledger.backends.lnd import LndBackend
from apps.ledger.models import LedgerEntry
from tests.lnd_server import LndServer


@contextmanager
def lnd_backend(settings: Any) -> Iterator[LndServer]:
    """The ledger on the `lnd` backend, talking to a local server that speaks LND's REST API over TLS."""
    with LndServer() as server:
        settings.LIGHTNING_BACKEND = "lnd"
        settings.LND_REST_URL = server.url
        settings.LND_MACAROON_PATH = str(server.macaroon_path)
        settings.LND_TLS_CERT_PATH = str(server.cert_path)
        reset_backend()
        assert isinstance(get_backend(), LndBackend)
        yield server
    reset_backend()


def fund_wallet(sats: int, *, node_dir: Path) -> LedgerEntry:
    """Sats arrive in the ledger (an invoice of a dev node keyed in `node_dir`, paid from outside): payments to
    agents never take the balance below zero, so a test that expects its winner paid needs funds first."""
    node_dir.mkdir(parents=True, exist_ok=True)
    node = DevBackend(node_dir)
    entry = services.create_invoice_entry(amount_sats=sats, memo="funds for the test", source="test", backend=node)
    return services.mark_settled(payment_hash=entry.payment_hash, preimage=node.simulate_payment(entry.payment_hash))
