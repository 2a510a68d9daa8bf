"""What the ledger needs from a Lightning node (`LIGHTNING_BACKEND`): create and look up invoices, pay one, the
node's balance and health. Amounts are whole sats; hashes and preimages are 64 lowercase hex characters."""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class BackendError(Exception):
    """The node refused, or could not be reached; the message says which and why (never a secret)."""


class BackendUnavailable(BackendError):
    """The node could not be reached (connection, timeout, 5xx): the outcome of a payment is unknown."""


class InvoiceNotFound(BackendError, LookupError):
    pass


class InvoiceState(StrEnum):
    OPEN = "open"
    SETTLED = "settled"
    EXPIRED = "expired"  # past its expiry unpaid (LND reports these as CANCELED)
    CANCELED = "canceled"


class PaymentState(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True)
class Invoice:
    payment_hash: str
    payment_request: str  # BOLT11
    amount_sats: int
    memo: str
    expires_at: datetime


@dataclass(frozen=True)
class InvoiceStatus:
    payment_hash: str
    state: InvoiceState
    amount_sats: int
    preimage: str = ""  # only once settled
    settled_at: datetime | None = None


@dataclass(frozen=True)
class Payment:
    payment_hash: str
    state: PaymentState
    preimage: str = ""  # only when succeeded
    fee_sats: int = 0
    failure_reason: str = ""


@dataclass(frozen=True)
class NodeBalance:
    # Spendable over channels (or, for the dev node, what it has received minus what it has paid).
    local_sats: int
    # Receivable over channels; None when the node does not say.
    remote_sats: int | None = None


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


class LightningBackend(Protocol):
    name: str

    def create_invoice(self, *, amount_sats: int, memo: str, expiry_seconds: int) -> Invoice: ...

    def lookup_invoice(self, payment_hash: str) -> InvoiceStatus: ...

    def pay_invoice(self, payment_request: str, *, timeout_seconds: int) -> Payment:
        """Pay and wait up to timeout_seconds: IN_FLIGHT when the outcome is not known yet."""
        ...

    def lookup_payment(self, payment_hash: str) -> Payment: ...

    def balance(self) -> NodeBalance: ...

    def health(self) -> Health: ...
