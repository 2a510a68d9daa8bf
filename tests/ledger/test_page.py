"""The ledger page (/lightning/ledger), its CSV export and the dev node's simulated payment, on the real dev node:
entries are made through the services, never written by hand."""

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.events.models import Event
from apps.ledger import backends, services
from apps.ledger.backends.base import Payment, PaymentState
from apps.ledger.backends.dev import DevBackend, decode
from apps.ledger.models import DevInvoice, LedgerEntry, TxStatus
from tests.factories import AgentFactory, TaskFactory

PAGE = reverse("ledger:index")
CSV = reverse("ledger:csv")
HTMX = {"HX-Request": "true"}


def simulate_url(entry: LedgerEntry) -> str:
    return reverse("ledger:simulate", args=[entry.payment_hash])


def invoice(amount_sats: int = 1000, memo: str = "", source: str = "api", **fields) -> LedgerEntry:
    return services.create_invoice_entry(amount_sats=amount_sats, memo=memo, source=source, **fields)


def card(page: str, name: str) -> str:
    """The figure of one balance card."""
    match = re.search(rf'id="balance-{name}">.*?<dd class="ledger-sats">([^<]*)</dd>', page, re.S)
    assert match, f"no {name} card"
    return match.group(1)


def row(page: str, entry: LedgerEntry) -> str:
    match = re.search(rf'<tr id="entry-{entry.pk}".*?</tr>', page, re.S)
    assert match, f"entry {entry.pk} is not listed"
    return match.group(0)


def listed(response) -> list[int]:
    return [entry.pk for entry in response.context["entries"]]


class InFlightNode(DevBackend):
    """The dev node, except that its payments are still in flight when the ledger asks: they stay pending."""

    def pay_invoice(self, payment_request: str, *, timeout_seconds: int) -> Payment:
        return Payment(decode(payment_request).payment_hash, PaymentState.IN_FLIGHT)


def test_balance_cards_show_available_pending_net_and_fees_with_what_each_means(
    transactional_db, dev_node, staff_user, staff_client, settings
):
    in_flight = InFlightNode(settings.DATA_DIR)
    paid_in = invoice(5000, memo="chat answer", source="l402:/api/v1/chat")
    services.dev_simulate_payment(payment_hash=paid_in.payment_hash, actor=staff_user)
    invoice(1200)  # pending in
    # Paid out with a fee: pending while in flight, then settled with the preimage.
    sent = dev_node.create_invoice(amount_sats=2000, memo="to an agent", expiry_seconds=600)
    services.record_outgoing(payment_request=sent.payment_request, source="test", backend=in_flight)
    preimage = DevInvoice.objects.get(payment_hash=sent.payment_hash).preimage
    services.mark_settled(payment_hash=sent.payment_hash, preimage=preimage, fee_sats=7)
    # Still in flight: pending out.
    flying = dev_node.create_invoice(amount_sats=300, memo="", expiry_seconds=600)
    services.record_outgoing(payment_request=flying.payment_request, source="test", backend=in_flight)
    # Thousands apart for the separators.
    big = invoice(1_234_567)
    services.dev_simulate_payment(payment_hash=big.payment_hash, actor=staff_user)

    response = staff_client.get(PAGE)
    assert response.status_code == 200
    page = response.content.decode()
    net = 5000 + 1_234_567 - 2000 - 7
    assert card(page, "net") == f"{net:,}" == "1,237,560"
    assert card(page, "available") == f"{net - 300:,}"
    assert card(page, "pending-in") == "1,200"
    assert card(page, "pending-out") == "300"
    assert card(page, "fees") == "7"
    assert "Net minus pending outgoing" in page and "not counted until settled" in page
    assert "Rows are never edited" in page
    # The chart's data: today's settlements, as json_script; and the same figures as a table.
    chart = json.loads(re.search(r'id="ledger-chart-data"[^>]*>(.*?)</script>', page, re.S).group(1))
    assert len(chart["labels"]) == 30 and chart["labels"][-1] == timezone.localdate().isoformat()
    assert chart["incoming"][-1] == 1_239_567 and chart["outgoing"][-1] == 2000
    assert sum(chart["incoming"][:-1]) == sum(chart["outgoing"][:-1]) == 0
    assert "1,239,567 sats in and\n    2,000 sats out over the last 30 days" in page
    assert "<details>" in page and '<td class="num">1,239,567</td>' in page
    # Earnings per L402 endpoint.
    assert [(e.endpoint, e.payments, e.sats) for e in response.context["earnings"]] == [("/api/v1/chat", 1, 5000)]
    assert re.search(r"<code>/api/v1/chat</code></th><td class=\"num\">1</td><td class=\"num\">5,000</td>", page)


def test_entries_show_date_type_status_amounts_memo_source_task_agent_and_shortened_hash(dev_node, staff_client):
    agent = AgentFactory(name="echo-7")
    task = TaskFactory(description="Summarise the logs")
    entry = invoice(4321, memo="Task 3: summarise", source="swarm", task=task, agent=agent)
    page = staff_client.get(PAGE).content.decode()
    html = row(page, entry)
    assert entry.created_at.strftime("%Y-%m-%d %H:%M") in html
    assert "<td>Incoming</td>" in html and ">Pending</span>" in html
    assert '<td class="num">4,321</td>' in html and '<td class="num">0</td>' in html
    assert "Task 3: summarise" in html and "<code>swarm</code>" in html
    assert f'href="{task.get_absolute_url()}" title="Summarise the logs">#{task.pk}</a>' in html
    assert "<td>echo-7</td>" in html
    assert f'title="{entry.payment_hash}">{entry.payment_hash[:12]}…</code>' in html


def test_filters_by_type_status_and_days_with_and_without_htmx(transactional_db, dev_node, staff_user, staff_client):
    pending = invoice(100)
    settled = invoice(200)
    services.dev_simulate_payment(payment_hash=settled.payment_hash, actor=staff_user)
    sent = dev_node.create_invoice(amount_sats=300, memo="", expiry_seconds=600)
    outgoing = services.record_outgoing(payment_request=sent.payment_request, source="test")
    assert outgoing.status == TxStatus.SETTLED
    # Test data only: an entry created three days ago (rows are never edited by the app).
    old = invoice(400)
    three_days_ago = timezone.localdate() - timedelta(days=3)
    LedgerEntry.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))

    for headers in ({}, HTMX):
        assert listed(staff_client.get(PAGE, {"type": "outgoing"}, headers=headers)) == [outgoing.pk]
        assert listed(staff_client.get(PAGE, {"status": "pending"}, headers=headers)) == [old.pk, pending.pk]
        both = staff_client.get(PAGE, {"type": "incoming", "status": "settled"}, headers=headers)
        assert listed(both) == [settled.pk]
        until = staff_client.get(PAGE, {"until": three_days_ago.isoformat()}, headers=headers)
        assert listed(until) == [old.pk]
        since = staff_client.get(PAGE, {"since": (three_days_ago + timedelta(days=1)).isoformat()}, headers=headers)
        assert listed(since) == [outgoing.pk, settled.pk, pending.pk]
    day = staff_client.get(PAGE, {"since": three_days_ago.isoformat(), "until": three_days_ago.isoformat()})
    assert listed(day) == [old.pk]

    partial = staff_client.get(PAGE, {"type": "outgoing"}, headers=HTMX).content.decode()
    assert "<html" not in partial and partial.startswith('<div id="ledger-results">')
    assert 'id="ledger-balance"' not in partial  # the results region only
    full = staff_client.get(PAGE, {"type": "outgoing"}).content.decode()
    assert '<option value="outgoing" selected>' in full  # the GET form keeps the filter
    assert f'href="{CSV}?type=outgoing"' in full


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"type": "refund"}, "Unknown type “refund”: the type is incoming or outgoing."),
        ({"status": "done"}, "Unknown status “done”: the status is one of pending, settled, failed, expired."),
        ({"since": "yesterday"}, "Since: Give the date as YYYY-MM-DD"),
        ({"until": "2025-13-01"}, "Until: Give the date as YYYY-MM-DD"),
        ({"since": "2025-02-01", "until": "2025-01-01"}, "“Since” (2025-02-01) is after “until” (2025-01-01)"),
        ({"before": "abc"}, "“before” is the id of an entry: a whole number."),
    ],
)
def test_a_bad_filter_value_is_refused_with_400_and_the_reason(dev_node, staff_client, params, reason):
    invoice(100)
    for headers in ({}, HTMX):
        response = staff_client.get(PAGE, params, headers=headers)
        assert response.status_code == 400
        page = response.content.decode().replace("&#x27;", "'")
        assert reason in page
        assert 'role="alert"' in page and "Cannot filter the ledger" in page
        assert response.context["entries"] == []
    csv_response = staff_client.get(CSV, params)
    assert csv_response.status_code == 400
    assert reason.split(": ", 1)[-1] in csv_response.content.decode()


def test_entries_come_fifty_a_page_newest_first_with_older_pages_by_id(dev_node, staff_client):
    entries = [invoice(1000 + i, memo=f"invoice {i}") for i in range(53)]
    newest_first = [e.pk for e in reversed(entries)]

    first = staff_client.get(PAGE, {"type": "incoming"})
    assert listed(first) == newest_first[:50]
    older = f"{PAGE}?type=incoming&amp;before={newest_first[49]}"
    assert f'href="{older}"' in first.content.decode() and "← Newest" not in first.content.decode()

    for headers in ({}, HTMX):
        second = staff_client.get(PAGE, {"type": "incoming", "before": newest_first[49]}, headers=headers)
        assert listed(second) == newest_first[50:]
        page = second.content.decode()
        assert re.search(rf'<a href="{PAGE}\?type=incoming" [^>]*>← Newest</a>', page) and "Older →" not in page


def test_the_entries_list_takes_the_same_number_of_queries_for_one_row_as_for_a_thousand(dev_node, staff_client):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert staff_client.get(PAGE).status_code == 200
        return len(captured)

    invoice(1, task=TaskFactory(), agent=AgentFactory())
    one = queries()
    for i in range(940):
        invoice(100 + i)
    for i in range(60):  # the newest page: each row with its own task and agent
        invoice(2 + i, task=TaskFactory(), agent=AgentFactory())
    assert LedgerEntry.objects.count() == 1001
    assert queries() == one
    with CaptureQueriesContext(connection) as captured:
        staff_client.get(PAGE, {"status": "pending", "before": 900}, headers=HTMX)
    assert len(captured) <= one


def test_csv_export_streams_every_filtered_entry_newest_first_with_a_dated_filename(dev_node, staff_user, staff_client):
    agent = AgentFactory(name="scribe")
    first = invoice(100, memo="=cmd()", agent=agent)
    paid = invoice(200, memo="paid, with a comma")
    services.dev_simulate_payment(payment_hash=paid.payment_hash, actor=staff_user)
    pending = invoice(300)

    response = staff_client.get(CSV, {"status": "pending", "type": "incoming"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="ledger-{timezone.localdate().isoformat()}.csv"'
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:4] == ["date", "type", "status", "amount_sats"]
    assert [(r[3], r[5], r[9]) for r in rows[1:]] == [("300", "", ""), ("100", "'=cmd()", "scribe")]
    assert rows[1][6] == pending.payment_hash and rows[2][6] == first.payment_hash

    everything = list(csv.reader(io.StringIO(b"".join(staff_client.get(CSV).streaming_content).decode())))
    assert [r[3] for r in everything[1:]] == ["300", "200", "100"]
    settled = everything[2]
    assert settled[2] == "settled" and settled[5] == "paid, with a comma" and len(settled[7]) == 64  # the preimage


def test_simulate_payment_button_is_on_pending_incoming_entries_in_dev_mode_and_settles_one(dev_node, staff_client):
    pending = invoice(2500, memo="L402 ticket")
    done = invoice(100)
    staff_client.post(simulate_url(done))
    page = staff_client.get(PAGE).content.decode()
    assert "Simulate payment" in row(page, pending) and "Simulate payment" not in row(page, done)
    assert 'name="csrfmiddlewaretoken"' in row(page, pending)

    response = staff_client.post(simulate_url(pending), {"query": "type=incoming&since=2020-01-01"})
    assert response.status_code == 302
    assert response.url == f"{PAGE}?type=incoming&since=2020-01-01"  # back to the same filters
    pending.refresh_from_db()
    assert pending.status == TxStatus.SETTLED and pending.preimage
    assert Event.objects.filter(event_type="payment.simulated", data__payment_hash=pending.payment_hash).exists()
    page = staff_client.get(response.url).content.decode()
    assert "Simulated a payment of 2,500 sats (“L402 ticket”): the invoice is settled." in page
    assert ">Settled</span>" in row(page, pending) and "Simulate payment" not in row(page, pending)
    assert card(page, "net") == "2,600"


def test_simulate_with_htmx_answers_the_entries_and_the_balance_and_chart_out_of_band(dev_node, staff_client):
    pending = invoice(1500)
    response = staff_client.post(simulate_url(pending), {"query": "status=pending"}, headers=HTMX)
    assert response.status_code == 200
    page = response.content.decode()
    assert page.startswith('<div id="ledger-results">') and "<html" not in page
    assert "Simulated a payment of 1,500 sats" in page
    assert listed(response) == []  # the entry is no longer pending: gone from the filtered list
    assert '<section class="card" id="ledger-balance" hx-swap-oob="true">' in page
    assert card(page, "available") == "1,500"
    assert '<div id="ledger-daily" hx-swap-oob="true">' in page and 'id="ledger-chart-data"' in page


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("settled", "The invoice is settled; only a pending invoice can be paid."),
        ("unknown", "No incoming ledger entry has the payment hash"),
        ("not-hex", "The payment hash must be 64 hexadecimal characters."),
    ],
)
def test_simulate_refuses_with_a_message_never_a_500(dev_node, staff_user, staff_client, target, reason):
    entry = invoice(100)
    services.dev_simulate_payment(payment_hash=entry.payment_hash, actor=staff_user)
    payment_hash = {"settled": entry.payment_hash, "unknown": "ab" * 32, "not-hex": "nothex"}[target]
    url = reverse("ledger:simulate", args=[payment_hash])

    response = staff_client.post(url, {"query": "status=settled"})
    assert response.status_code == 302 and response.url == f"{PAGE}?status=settled"
    page = staff_client.get(response.url).content.decode()
    assert reason in page and '<li class="error">No payment simulated' in page

    htmx = staff_client.post(url, {"query": "status=settled"}, headers=HTMX)
    assert htmx.status_code == 422
    assert reason in htmx.content.decode() and listed(htmx) == [entry.pk]


def test_with_lnd_there_is_no_simulate_button_and_the_post_is_refused_with_the_reason(dev_node, staff_client, settings):
    entry = invoice(100)
    settings.LIGHTNING_BACKEND = "lnd"
    backends.reset_backend()

    page = staff_client.get(PAGE).content.decode()
    assert "Simulate payment" not in page and "Dev mode" not in page
    assert f'id="entry-{entry.pk}"' in page
    for headers in ({}, HTMX):
        response = staff_client.post(simulate_url(entry), headers=headers)
        assert response.status_code == 403
        assert "exist only with the embedded dev node (LIGHTNING_BACKEND=dev)" in response.content.decode()
    entry.refresh_from_db()
    assert entry.status == TxStatus.PENDING
    # The setting said no before any backend was built (an lnd client needs the node's address and macaroon).
    assert backends._backend.cache_info().currsize == 0


def test_simulate_requires_the_csrf_token(dev_node, staff_user):
    entry = invoice(100)
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    response = client.post(simulate_url(entry))
    assert response.status_code == 403
    entry.refresh_from_db()
    assert entry.status == TxStatus.PENDING


def test_simulate_is_post_only(dev_node, staff_client):
    entry = invoice(100)
    assert staff_client.get(simulate_url(entry)).status_code == 405
    entry.refresh_from_db()
    assert entry.status == TxStatus.PENDING


def test_non_staff_are_refused_the_page_the_csv_and_the_simulation(dev_node, plain_client, client):
    entry = invoice(100)
    for url, method in ((PAGE, "get"), (CSV, "get"), (simulate_url(entry), "post")):
        refused = getattr(plain_client, method)(url)
        assert refused.status_code == 403 and b"Staff only" in refused.content
        anonymous = getattr(client, method)(url)
        assert anonymous.status_code == 302 and anonymous.url.startswith(reverse("login"))
    entry.refresh_from_db()
    assert entry.status == TxStatus.PENDING
