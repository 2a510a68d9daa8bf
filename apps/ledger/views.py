from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.text import Truncator
from django.views.decorators.http import require_POST, require_safe

from apps.core.decorators import staff_required
from apps.core.types import HtmxHttpRequest
from apps.ledger import selectors, services
from apps.ledger.forms import LedgerFilterForm

PAGE_SIZE = 50
CHART_DAYS = 30
CSV_CHUNK = 500
# base.html's htmx-config swaps 400 and 422 answers only: a refused simulation must still show its message.
HTMX_REFUSED = 422
NOT_DEV_MODE = (
    "Simulated payments exist only with the embedded dev node (LIGHTNING_BACKEND=dev); this server uses "
    "“{backend}”, where an invoice is settled only by a real payment."
)


def _dev_mode() -> bool:
    # The setting, not get_backend(): with lnd that would build a client for the node just to say no.
    return bool(settings.LIGHTNING_BACKEND == "dev")


def _results_context(form: LedgerFilterForm) -> tuple[dict[str, Any], int]:
    """The entries region (filters, one page of entries, pager, CSV link), and 400 when a filter is bad."""
    context: dict[str, Any] = {"form": form, "dev_mode": _dev_mode(), "page_size": PAGE_SIZE}
    if form.is_bound and not form.is_valid():
        return {**context, "entries": [], "next_before_id": None}, 400
    before = form.cleaned_data.get("before") if form.is_bound else None
    page = selectors.ledger_entries_page(limit=PAGE_SIZE, before_id=before, **form.filters())
    query = form.filter_query()
    page_query = QueryDict(query, mutable=True)
    if before:
        page_query["before"] = str(before)
    context.update(
        entries=page.entries,
        next_before_id=page.next_before_id,
        paged=before is not None,
        filtered=any(form.filters().values()),
        query=query,
        page_query=page_query.urlencode(),
    )
    return context, 200


def _summary_context() -> dict[str, Any]:
    """The balance cards, the daily chart and the earnings per endpoint: a fixed handful of small queries."""
    days = selectors.daily_settled(days=CHART_DAYS)
    return {
        "balance": services.get_balance(),
        "days": days,
        "chart_days": CHART_DAYS,
        "chart": {
            "labels": [d.day.isoformat() for d in days],
            "incoming": [d.incoming_sats for d in days],
            "outgoing": [d.outgoing_sats for d in days],
        },
        "days_incoming_sats": sum(d.incoming_sats for d in days),
        "days_outgoing_sats": sum(d.outgoing_sats for d in days),
        "earnings": selectors.earnings_by_endpoint(),
    }


@staff_required
@require_safe
def index(request: HtmxHttpRequest) -> HttpResponse:
    """The page; with htmx (filters, paging) the entries region alone."""
    form = LedgerFilterForm(request.GET or None)
    context, status = _results_context(form)
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "ledger/_results.html", context, status=status)
    return render(request, "ledger/index.html", {**context, **_summary_context()}, status=status)


# staff_required is typed for HttpResponse views; a streaming response passes through it unchanged.
@staff_required  # type: ignore[arg-type]
@require_safe
def csv_export(request: HtmxHttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Every entry that matches the filters (not just one page), newest first, as the page lists them."""
    form = LedgerFilterForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        reasons = " ".join(str(error) for errors in form.errors.values() for error in errors)
        return HttpResponse(f"Cannot export: {reasons}\n", status=400, content_type="text/plain; charset=utf-8")
    entries = selectors.ledger_entries(**form.filters()).iterator(chunk_size=CSV_CHUNK)
    response = StreamingHttpResponse(selectors.ledger_csv_lines(entries), content_type="text/csv; charset=utf-8")
    filename = f"ledger-{timezone.localdate().isoformat()}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _refused(request: HtmxHttpRequest, reason: str) -> HttpResponse:
    return render(request, "ledger/refused.html", {"reason": reason}, status=403)


@staff_required
@require_POST
def simulate(request: HtmxHttpRequest, payment_hash: str) -> HttpResponse:
    """Dev mode: pay a pending invoice of ours as if from outside. Then the page again, with the same filters."""
    if not _dev_mode():
        return _refused(request, NOT_DEV_MODE.format(backend=settings.LIGHTNING_BACKEND))
    # The filters and page the button was on (a query string: the redirect can only go to this page).
    query = QueryDict(request.POST.get("query", ""))
    refused = False
    try:
        entry = services.dev_simulate_payment(payment_hash=payment_hash, actor=request.user)
    except (services.NotDevMode, services.NotAllowed) as exc:
        return _refused(request, str(exc))
    except services.LedgerError as exc:
        refused = True
        messages.error(request, f"No payment simulated for {Truncator(payment_hash).chars(20)}: {exc}")
    else:
        memo = f" (“{Truncator(entry.memo).chars(60)}”)" if entry.memo else ""
        messages.success(request, f"Simulated a payment of {entry.amount_sats:,} sats{memo}: the invoice is settled.")
    if request.htmx:
        context, _ = _results_context(LedgerFilterForm(query or None))
        context.update(_summary_context(), show_messages=True)
        return render(request, "ledger/_changed.html", context, status=HTMX_REFUSED if refused else 200)
    url = reverse("ledger:index")
    return redirect(f"{url}?{query.urlencode()}" if query else url)
