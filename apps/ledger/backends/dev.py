"""The embedded dev node (LIGHTNING_BACKEND=dev): real BOLT11 invoices on regtest (`lnbcrt…`), signed with a node
key generated once into the data dir, kept in the database so they survive restarts. An invoice settles only with
its preimage: when the node pays it (it can pay only its own invoices, which is how local agents are paid) or
when a staff user simulates an outside payment. No money exists here; the ledger's rules are the same as with LND.
"""

import hashlib
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bolt11
import coincurve
from bolt11.models.tags import Tag, TagChar, Tags
from bolt11.types import MilliSatoshi
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from apps.ledger.backends.base import (
    BackendError,
    Health,
    Invoice,
    InvoiceNotFound,
    InvoiceState,
    InvoiceStatus,
    NodeBalance,
    Payment,
    PaymentState,
)
from apps.ledger.models import DevInvoice, DevPayment

CURRENCY = "bcrt"  # regtest: no wallet would mistake these for real bitcoin
MIN_FINAL_CLTV_EXPIRY = 18
KEY_FILE = "lightning-dev-node.key"


def node_key(data_dir: Path) -> coincurve.PrivateKey:
    """The node's secp256k1 key: created once (mode 0600), read back by every process after."""
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    for _ in range(50):
        # Another process may have created the file a moment ago and not written the key yet.
        text = path.read_text().strip()
        if len(text) == 64:
            return coincurve.PrivateKey(bytes.fromhex(text))
        time.sleep(0.01)
    raise BackendError(f"The dev node key in {path} is not 64 hex characters; remove the file to make a new node.")


def decode(payment_request: str) -> bolt11.Bolt11:
    try:
        return bolt11.decode(payment_request.strip())
    except Exception as exc:  # the decoder raises many types (bech32, bitstring, its own) for bad input
        raise BackendError(f"Not a valid BOLT11 invoice: {exc}") from exc


class DevBackend:
    name = "dev"

    def __init__(self, data_dir: Path | None = None) -> None:
        self._key = node_key(data_dir or settings.DATA_DIR)
        self.pubkey = self._key.public_key.format().hex()

    def create_invoice(self, *, amount_sats: int, memo: str, expiry_seconds: int) -> Invoice:
        preimage = secrets.token_bytes(32)
        payment_hash = hashlib.sha256(preimage).hexdigest()
        created = int(time.time())
        tags = Tags(
            [
                Tag(TagChar.payment_hash, payment_hash),
                Tag(TagChar.payment_secret, secrets.token_hex(32)),
                Tag(TagChar.description, memo),
                Tag(TagChar.expire_time, expiry_seconds),
                Tag(TagChar.min_final_cltv_expiry, MIN_FINAL_CLTV_EXPIRY),
            ]
        )
        request = bolt11.encode(
            bolt11.Bolt11(currency=CURRENCY, date=created, tags=tags, amount_msat=MilliSatoshi(amount_sats * 1000)),
            self._key.to_hex(),
        )
        created_at = datetime.fromtimestamp(created, UTC)
        expires_at = created_at + timedelta(seconds=expiry_seconds)
        DevInvoice.objects.create(
            payment_hash=payment_hash,
            preimage=preimage.hex(),
            amount_sats=amount_sats,
            memo=memo,
            payment_request=request,
            created_at=created_at,
            expires_at=expires_at,
        )
        return Invoice(payment_hash, request, amount_sats, memo, expires_at)

    def lookup_invoice(self, payment_hash: str) -> InvoiceStatus:
        invoice = DevInvoice.objects.filter(payment_hash=payment_hash).first()
        if invoice is None:
            raise InvoiceNotFound(f"The dev node has no invoice {payment_hash}.")
        if invoice.state == DevInvoice.State.SETTLED:
            return InvoiceStatus(
                payment_hash, InvoiceState.SETTLED, invoice.amount_sats, invoice.preimage, invoice.settled_at
            )
        if invoice.state == DevInvoice.State.CANCELED:
            return InvoiceStatus(payment_hash, InvoiceState.CANCELED, invoice.amount_sats)
        if invoice.expires_at <= timezone.now():
            return InvoiceStatus(payment_hash, InvoiceState.EXPIRED, invoice.amount_sats)
        return InvoiceStatus(payment_hash, InvoiceState.OPEN, invoice.amount_sats)

    def _settle(self, payment_hash: str) -> str:
        """Settle an open, unexpired invoice of this node: its preimage. Raises BackendError why not."""
        now = timezone.now()
        with transaction.atomic():
            settled = DevInvoice.objects.filter(
                payment_hash=payment_hash, state=DevInvoice.State.OPEN, expires_at__gt=now
            ).update(state=DevInvoice.State.SETTLED, settled_at=now)
            invoice = DevInvoice.objects.filter(payment_hash=payment_hash).first()
        if invoice is None:
            raise InvoiceNotFound(f"The dev node has no invoice {payment_hash}.")
        if not settled:
            state = "expired" if invoice.state == DevInvoice.State.OPEN else invoice.state
            raise BackendError(f"The invoice is {state}.")
        return invoice.preimage

    def simulate_payment(self, payment_hash: str) -> str:
        """Development only: settle an open invoice as if someone outside had paid it, revealing its preimage."""
        return self._settle(payment_hash)

    def pay_invoice(self, payment_request: str, *, timeout_seconds: int) -> Payment:
        decoded = decode(payment_request)
        payment_hash = decoded.payment_hash
        amount_sats = (decoded.amount_msat or 0) // 1000
        if decoded.payee != self.pubkey:
            return self._record(payment_hash, amount_sats, reason="the dev node can only pay its own invoices")
        try:
            preimage = self._settle(payment_hash)
        except BackendError as exc:
            return self._record(payment_hash, amount_sats, reason=str(exc))
        return self._record(payment_hash, amount_sats, preimage=preimage)

    def _record(self, payment_hash: str, amount_sats: int, *, preimage: str = "", reason: str = "") -> Payment:
        DevPayment.objects.update_or_create(
            payment_hash=payment_hash,
            defaults={
                "amount_sats": amount_sats,
                "preimage": preimage,
                "succeeded": bool(preimage),
                "failure_reason": reason,
            },
        )
        if preimage:
            return Payment(payment_hash, PaymentState.SUCCEEDED, preimage=preimage)
        return Payment(payment_hash, PaymentState.FAILED, failure_reason=reason)

    def lookup_payment(self, payment_hash: str) -> Payment:
        payment = DevPayment.objects.filter(payment_hash=payment_hash).first()
        if payment is None:
            raise InvoiceNotFound(f"The dev node made no payment {payment_hash}.")
        if payment.succeeded:
            return Payment(payment_hash, PaymentState.SUCCEEDED, preimage=payment.preimage)
        return Payment(payment_hash, PaymentState.FAILED, failure_reason=payment.failure_reason)

    def balance(self) -> NodeBalance:
        received = DevInvoice.objects.filter(state=DevInvoice.State.SETTLED).aggregate(s=Sum("amount_sats"))["s"]
        paid = DevPayment.objects.filter(succeeded=True).aggregate(s=Sum("amount_sats"))["s"]
        return NodeBalance(local_sats=(received or 0) - (paid or 0))

    def health(self) -> Health:
        return Health(True, f"dev node {self.pubkey[:16]}… on regtest: invoices are real BOLT11, no money moves")
