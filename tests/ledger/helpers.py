from pathlib import Path

from apps.ledger import services
from apps.ledger.backends.dev import DevBackend
from apps.ledger.models import LedgerEntry


def fund_wallet(sats: int, *, node_dir: Path) -> LedgerEntry:
    """Sats arrive in the ledger (an invoice of a dev node keyed in `node_dir`, paid from outside): payments to
    agents never take the balance below zero, so a test that expects its winner paid needs funds first."""
    node_dir.mkdir(parents=True, exist_ok=True)
    node = DevBackend(node_dir)
    entry = services.create_invoice_entry(amount_sats=sats, memo="funds for the test", source="test", backend=node)
    return services.mark_settled(payment_hash=entry.payment_hash, preimage=node.simulate_payment(entry.payment_hash))
