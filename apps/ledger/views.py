from typing import Any
from urllib.parse import urlsplit

import segno
from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator
from django.views.decorators.http import require_POST, require_safe

from apps.core.decorators import staff_required
from apps.core.types import HtmxHttpRequest
from apps.events import selectors as events
from apps.ledger import selectors, services
from apps.ledger.backends.base import BackendError
from apps.ledger.forms import LedgerFilterForm, ReceiveForm
from apps.ledger.models import LedgerEntry, TxStatus

PAGE_SIZE = 50
CHART_DAYS = 30
CSV_CHUNK = 500
# base.html's htmx-config swaps 400 and 422 answers only: a refused simulation must still show its message.
HTMX_REFUSED = 422
NOT_DEV_MODE = (
    "Simulated payments exist only with the embedded dev node (LIGHTNING_BACKEND=dev); this server uses "
    "“{backend}”, where an invoice is settled only by a real payment."
)


# Invoices made on the Receive card: "dashboard:<username>", as the API's are "api:<username>".
RECEIVE_SOURCE = "dashboard"
PAYMENT_HASH_LENGTH = 64


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


def invoice_qr_svg(payment_request: str) -> SafeString:
    """The invoice as a QR code in inline SVG, drawn here: no script and no outside service sees it.

    Upper case, as BOLT11 recommends for QR codes: bech32 allows either case, and in upper case the whole
    "LIGHTNING:" URI fits QR's alphanumeric mode, a smaller code that a camera reads more easily."""
    code = segno.make(f"lightning:{payment_request}".upper(), error="m")
    # Safe markup: segno writes only the modules' geometry and the attributes given here, never the text it encodes.
    svg = code.svg_inline(
        scale=1, border=4, omitsize=True, svgclass="ledger-qr-code", lineclass=None, dark="#000", light="#fff"
    )
    return mark_safe(svg)  # noqa: S308


def _shown_invoice(params: QueryDict) -> LedgerEntry | None:
    """The invoice the Receive card shows (`invoice`, a payment hash), if it names one of ours."""
    payment_hash = params.get("invoice", "")
    if not payment_hash or len(payment_hash) > PAYMENT_HASH_LENGTH:
        return None
    return selectors.incoming_invoice(payment_hash=payment_hash)


def _receive_context(*, form: ReceiveForm | None = None, entry: LedgerEntry | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"receive_form": form or ReceiveForm(), "dev_mode": _dev_mode()}
    if entry is not None:
        pending = entry.status == TxStatus.PENDING
        context.update(invoice_entry=entry, invoice_qr=invoice_qr_svg(entry.invoice) if pending else None)
    return context


def _page_query(request: HtmxHttpRequest) -> QueryDict:
    """The filters and page the answer is for: the form's `query`, else (htmx) those of the page that asked."""
    if request.POST.get("query"):
        return QueryDict(request.POST["query"])
    if request.htmx and request.htmx.current_url:
        # The filters and the pager push their query into the address bar, so the page's address has them.
        parts = urlsplit(request.htmx.current_url)
        if parts.path == reverse("ledger:index"):
            return QueryDict(parts.query)
    return QueryDict()


def _index_url(query: QueryDict) -> str:
    url = reverse("ledger:index")
    return f"{url}?{query.urlencode()}" if query else url


@staff_required
@require_safe
def index(request: HtmxHttpRequest) -> HttpResponse:
    """The page; with htmx (filters, paging) the entries region alone."""
    form = LedgerFilterForm(request.GET or None)
    context, status = _results_context(form)
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "ledger/_results.html", context, status=status)
    context.update(**_summary_context(), **_receive_context(entry=_shown_invoice(request.GET)))
    # The live updates resume after the newest event the page was drawn with.
    context["live_since"] = events.event_latest_id()
    return render(request, "ledger/index.html", context, status=status)


@staff_required
@require_POST
def receive(request: HtmxHttpRequest) -> HttpResponse:
    """The Receive card: an invoice from the node for an amount and a memo. With htmx the card again (with the new
    invoice, or with the reason it was refused) and the entries and balance out of band."""
    form = ReceiveForm(request.POST)
    entry = None
    status = HTMX_REFUSED
    if form.is_valid():
        try:
            entry = services.create_invoice_entry(
                amount_sats=form.cleaned_data["amount_sats"],
                memo=form.cleaned_data["memo"],
                source=f"{RECEIVE_SOURCE}:{request.user.get_username()}",
            )
        except services.InvalidPayment as exc:
            form.add_error(None, str(exc))
        except BackendError as exc:
            form.add_error(None, f"The Lightning node cannot make an invoice now: {exc}")
            status = 503
    if entry is None:
        if request.htmx:
            return render(request, "ledger/_receive.html", _receive_context(form=form), status=status)
        context, _ = _results_context(LedgerFilterForm())
        context.update(**_summary_context(), **_receive_context(form=form), live_since=events.event_latest_id())
        return render(request, "ledger/index.html", context, status=status)
    query = _page_query(request).copy()
    query["invoice"] = entry.payment_hash
    if not request.htmx:
        return redirect(_index_url(query))
    context, _ = _results_context(LedgerFilterForm(query))
    context.update(**_receive_context(entry=entry), balance=services.get_balance())
    response = render(request, "ledger/_receive_changed.html", context)
    # A reload shows the same invoice on the card.
    response["HX-Replace-Url"] = _index_url(query)
    return response


@staff_required
@require_safe
def live(request: HtmxHttpRequest) -> HttpResponse:
    """What a payment changes on the page, all out of band, for static/js/ledger-live.js to fetch when the event
    feed reports one: the entries (the page's filters and page), the balance, chart and earnings, and the invoice
    on the Receive card (`invoice`)."""
    form = LedgerFilterForm(request.GET or None)
    context, _ = _results_context(form)
    context.update(**_summary_context(), **_receive_context(entry=_shown_invoice(request.GET)))
    return render(request, "ledger/_live.html", context)


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
    query = _page_query(request)
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
    # Pressed on the Receive card: that card shows the invoice's new state too.
    shown = _shown_invoice(request.POST)
    if request.htmx:
        context, _ = _results_context(LedgerFilterForm(query or None))
        context.update(**_summary_context(), **_receive_context(entry=shown), show_messages=True)
        return render(request, "ledger/_changed.html", context, status=HTMX_REFUSED if refused else 200)
    if shown is not None:
        query = query.copy()
        query["invoice"] = shown.payment_hash
    return redirect(_index_url(query))
