from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.utils import timezone

from apps.ledger import selectors, services
from apps.ledger.backends.base import BackendError
from apps.ledger.models import LedgerEntry


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    """A read-only audit of every sat: rows only change through the services."""

    list_display = [
        "id", "created_at", "tx_type", "status", "amount_sats", "fee_sats", "memo", "source", "task", "agent",
        "settled_at",
    ]  # fmt: skip
    list_filter = ["tx_type", "status", "source", "created_at"]
    list_select_related = ["agent", "task"]
    search_fields = ["=payment_hash", "memo"]
    show_full_result_count = False
    date_hierarchy = "created_at"
    actions = ["export_csv", "reconcile"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: LedgerEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: LedgerEntry | None = None) -> bool:
        return False

    @admin.action(description="Export the selected entries as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[LedgerEntry]) -> HttpResponseBase:
        response = StreamingHttpResponse(
            selectors.ledger_csv_lines(queryset.select_related("agent").order_by("id").iterator()),
            content_type="text/csv",
        )
        response["Content-Disposition"] = f'attachment; filename="ledger-{timezone.now():%Y%m%d-%H%M%S}.csv"'
        return response

    @admin.action(description="Reconcile pending entries with the node", permissions=["view"])
    def reconcile(self, request: HttpRequest, queryset: QuerySet[LedgerEntry]) -> None:
        # The whole ledger's pending rows, whatever is selected: reconciling is about the node, not a selection.
        try:
            report = services.reconcile()
        except BackendError as exc:
            self.message_user(request, f"The node could not be asked: {exc}", messages.ERROR)
            return
        self.message_user(
            request,
            f"Checked {report.checked} pending entries: {report.settled} settled, {report.failed} failed, "
            f"{report.expired} expired, {report.still_pending} still pending"
            + (" (the node stopped answering)" if report.unreachable else "")
            + ".",
            messages.WARNING if report.unreachable else messages.SUCCESS,
        )
        for line in report.drift[:20]:
            self.message_user(request, f"Drift: {line}", messages.WARNING)
