"""The ledger (ADR-018): every sat that moves is a row whose status can be trusted.

Rows are appended and then only change status (pending → settled | failed | expired), through the services'
conditional updates; amounts and hashes never change after creation. The dev node's invoices live in a table of
their own, so its invoices (and their secrets) survive restarts.
"""

from django.db import models

SWARM_PAYMENT_SOURCE = "swarm"


class TxType(models.TextChoices):
    INCOMING = "incoming", "Incoming"
    OUTGOING = "outgoing", "Outgoing"


class TxStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SETTLED = "settled", "Settled"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"


class LedgerEntry(models.Model):
    tx_type = models.CharField(max_length=10, choices=TxType.choices)
    status = models.CharField(max_length=10, choices=TxStatus.choices, default=TxStatus.PENDING)
    payment_hash = models.CharField(max_length=64, unique=True)
    amount_sats = models.PositiveBigIntegerField()
    memo = models.CharField(max_length=640, blank=True)
    invoice = models.TextField(blank=True)  # the BOLT11 payment request
    # The proof of payment: sha256(preimage) == payment_hash. Kept once known, never erased.
    preimage = models.CharField(max_length=64, blank=True)
    # What caused it: "l402:<endpoint>", "swarm", "api", "dashboard", ...
    source = models.CharField(max_length=100)
    task = models.ForeignKey("swarm.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="payments")
    agent = models.ForeignKey("swarm.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="payments")
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    fee_sats = models.PositiveBigIntegerField(default=0)
    failure_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        db_table = "ledger"
        verbose_name = "ledger entry"
        verbose_name_plural = "ledger entries"
        ordering = ["-id"]
        indexes = [
            # Newest first within a status, or a status and a type, without sorting (the page's filters).
            models.Index(fields=["status", "id"], name="ledger_status_idx"),
            models.Index(fields=["status", "tx_type", "id"], name="ledger_status_type_idx"),
            models.Index(fields=["created_at"], name="ledger_created_idx"),
            models.Index(fields=["source", "status"], name="ledger_source_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(tx_type__in=TxType.values), name="ledger_tx_type_valid"),
            models.CheckConstraint(condition=models.Q(status__in=TxStatus.values), name="ledger_status_valid"),
            # A completed task pays its agent once: one swarm payment per task, unless an earlier one failed.
            models.UniqueConstraint(
                fields=["task"],
                condition=models.Q(source=SWARM_PAYMENT_SOURCE) & ~models.Q(status=TxStatus.FAILED),
                name="ledger_one_live_task_payment",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tx_type} {self.amount_sats} sats ({self.status})"


class LedgerTotals(models.Model):
    """Running sums per (type, status), moved in the same transaction as every ledger row, so the balance is
    read from eight rows however long the ledger grows. `ledger_reconcile` checks them against the rows."""

    tx_type = models.CharField(max_length=10, choices=TxType.choices)
    status = models.CharField(max_length=10, choices=TxStatus.choices)
    count = models.BigIntegerField(default=0)
    amount_sats = models.BigIntegerField(default=0)
    fee_sats = models.BigIntegerField(default=0)

    class Meta:
        db_table = "ledger_totals"
        verbose_name_plural = "ledger totals"
        constraints = [models.UniqueConstraint(fields=["tx_type", "status"], name="ledger_totals_one_per_bucket")]

    def __str__(self) -> str:
        return f"{self.tx_type}/{self.status}: {self.count} rows, {self.amount_sats} sats"


class LedgerDaily(models.Model):
    """Settled sats per day (of settlement), type and source, moved with every settlement: the ledger page's chart
    and the earnings per paid endpoint, read from a few hundred rows however long the ledger grows."""

    day = models.DateField()
    tx_type = models.CharField(max_length=10, choices=TxType.choices)
    source = models.CharField(max_length=100)
    count = models.BigIntegerField(default=0)
    amount_sats = models.BigIntegerField(default=0)
    fee_sats = models.BigIntegerField(default=0)

    class Meta:
        db_table = "ledger_daily"
        verbose_name_plural = "ledger daily sums"
        constraints = [models.UniqueConstraint(fields=["day", "tx_type", "source"], name="ledger_daily_one_per_bucket")]

    def __str__(self) -> str:
        return f"{self.day} {self.tx_type} {self.source}: {self.amount_sats} sats"


class DevInvoice(models.Model):
    """An invoice of the embedded dev node (LIGHTNING_BACKEND=dev): the secret preimage stays here until paid."""

    class State(models.TextChoices):
        OPEN = "open", "Open"
        SETTLED = "settled", "Settled"
        CANCELED = "canceled", "Canceled"

    payment_hash = models.CharField(max_length=64, unique=True)
    preimage = models.CharField(max_length=64)
    amount_sats = models.PositiveBigIntegerField()
    memo = models.CharField(max_length=640, blank=True)
    payment_request = models.TextField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.OPEN)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "ledger_dev_invoices"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"dev invoice {self.payment_hash[:12]}… {self.amount_sats} sats ({self.state})"


class DevPayment(models.Model):
    """A payment the dev node made (to one of its own invoices)."""

    payment_hash = models.CharField(max_length=64, unique=True)
    amount_sats = models.PositiveBigIntegerField()
    preimage = models.CharField(max_length=64, blank=True)
    succeeded = models.BooleanField(default=False)
    failure_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "ledger_dev_payments"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"dev payment {self.payment_hash[:12]}… {self.amount_sats} sats"
