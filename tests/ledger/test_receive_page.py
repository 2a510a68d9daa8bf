"""Receive on /lightning/ledger: an invoice from the node for an amount and a memo, shown with a QR code drawn on
the server, copy buttons and (dev node) Simulate; refused with the service's reasons; and the regions the page's
live updates fetch when a payment event arrives."""

import re
from collections.abc import Iterator

import pytest
import segno
from django.urls import reverse

from apps.events.models import Event
from apps.ledger import services
from apps.ledger.models import DevInvoice, LedgerEntry, TxStatus
from tests.ledger.helpers import lnd_backend
from tests.lnd_server import LndServer

PAGE = reverse("ledger:index")
RECEIVE = reverse("ledger:receive")
LIVE = reverse("ledger:live")
HTMX = {"HX-Request": "true"}
SIMULATE = "Simulate payment (dev node: no real money)"
RANGE = f"The amount must be between 1 and {services.MAX_SATS:,} sats."


@pytest.fixture
def lnd(settings, db) -> Iterator[LndServer]:
    with lnd_backend(settings) as server:
        yield server


def invoice_card(page: str) -> str:
    match = re.search(r'<div class="ledger-invoice".*?</dl>(?:\s*<form class="ledger-simulate".*?</form>)?', page, re.S)
    assert match, "no invoice on the Receive card"
    return match.group(0)


def qr_modules(svg: str) -> list[list[bool]]:
    """The dark modules of segno's inline SVG: one path of horizontal runs (M/m moves, h runs), one unit a module."""
    size = int(re.search(r'viewBox="0 0 (\d+) \1"', svg).group(1))
    path = re.search(r'<path stroke="#000" d="([^"]+)"', svg).group(1)
    grid = [[False] * size for _ in range(size)]
    x = y = 0.0
    for command, args in re.findall(r"([Mmh])([-\d. ]+)", path):
        numbers = [float(n) for n in args.split()]
        if command == "M":
            x, y = numbers
        elif command == "m":
            x, y = x + numbers[0], y + numbers[1]
        else:
            for column in range(int(x), int(x + numbers[0])):
                grid[int(y)][column] = True
            x += numbers[0]
    return grid


def segno_modules(content: str, border: int = 4) -> list[list[bool]]:
    matrix = segno.make(content, error="m").matrix
    size = len(matrix) + 2 * border
    grid = [[False] * size for _ in range(size)]
    for row, modules in enumerate(matrix):
        for column, module in enumerate(modules):
            grid[row + border][column + border] = bool(module)
    return grid


def test_receive_makes_an_invoice_and_the_page_shows_it_with_qr_copy_buttons_and_simulate(dev_node, staff_client):
    response = staff_client.post(RECEIVE, {"amount_sats": "500", "memo": "  Coffee for the swarm "})
    entry = LedgerEntry.objects.get()
    assert (entry.amount_sats, entry.memo, entry.status) == (500, "Coffee for the swarm", TxStatus.PENDING)
    assert entry.source == "dashboard:reviewer" and entry.invoice.startswith("lnbcrt5u")
    assert Event.objects.filter(event_type="payment.invoice_created", data__payment_hash=entry.payment_hash).exists()
    assert response.status_code == 302 and response.url == f"{PAGE}?invoice={entry.payment_hash}"

    page = staff_client.get(response.url).content.decode()
    card = invoice_card(page)
    assert "Invoice for 500 sats" in card and ">Pending</span>" in card and "“Coffee for the swarm”" in card
    assert f'<code class="ledger-invoice-text" id="ledger-invoice-text">{entry.invoice}</code>' in card
    assert f'data-copy="{entry.invoice}" data-copy-source="ledger-invoice-text">Copy invoice</button>' in card
    assert f'data-copy="{entry.payment_hash}" data-copy-source="ledger-invoice-hash">Copy hash</button>' in card
    assert '<svg viewBox="0 0 ' in card and 'class="ledger-qr-code"' in card
    assert f'action="{reverse("ledger:simulate", args=[entry.payment_hash])}"' in card and SIMULATE in card
    # The entry's row has its own copy button for the whole hash, and Simulate labelled the same.
    row = re.search(rf'<tr id="entry-{entry.pk}".*?</tr>', page, re.S).group(0)
    assert f'data-copy="{entry.payment_hash}"' in row and SIMULATE in row
    assert re.search(r'id="ledger-live" data-since="\d+" data-url="/lightning/ledger/live"', page)


def test_the_qr_code_holds_the_invoice_as_an_uppercase_lightning_uri(dev_node, staff_client):
    staff_client.post(RECEIVE, {"amount_sats": "21000", "memo": "Scan me"})
    entry = LedgerEntry.objects.get()
    page = staff_client.get(PAGE, {"invoice": entry.payment_hash}).content.decode()
    svg = re.search(r"<svg .*?</svg>", page, re.S).group(0)
    # segno cannot read a code back, so compare the drawn modules with segno's encoding of what it should hold.
    uri = f"LIGHTNING:{entry.invoice.upper()}"
    assert qr_modules(svg) == segno_modules(uri)
    assert segno.make(uri, error="m").mode == "alphanumeric"  # the upper case is what makes the code small
    assert qr_modules(svg) != segno_modules(f"lightning:{entry.invoice}")


def test_receive_with_htmx_answers_the_card_with_the_invoice_and_the_entries_and_balance_out_of_band(
    dev_node, staff_client
):
    older = services.create_invoice_entry(amount_sats=40, source="api")
    response = staff_client.post(
        RECEIVE,
        {"amount_sats": "1234", "memo": ""},
        headers={**HTMX, "HX-Current-URL": f"http://testserver{PAGE}?status=pending"},
    )
    assert response.status_code == 200
    entry = LedgerEntry.objects.exclude(pk=older.pk).get()
    page = response.content.decode()
    assert page.startswith('<section class="card" id="ledger-receive">') and "<html" not in page
    assert 'name="amount_sats"' in page and 'value="1234"' not in page  # a fresh form for the next one
    assert "Invoice for 1,234 sats" in invoice_card(page)
    assert '<div id="ledger-entries-list" hx-swap-oob="true">' in page
    assert [e.pk for e in response.context["entries"]] == [entry.pk, older.pk]
    assert '<section class="card" id="ledger-balance" hx-swap-oob="true">' in page
    assert re.search(r'id="balance-pending-in">.*?<dd class="ledger-sats">1,274</dd>', page, re.S)
    # The page's address names the invoice (with the page's filters), so a reload shows it again.
    assert response["HX-Replace-Url"] == f"{PAGE}?status=pending&invoice={entry.payment_hash}"


@pytest.mark.parametrize(
    ("amount", "memo", "field", "reason"),
    [
        ("", "", "amount_sats", "Give the amount in sats."),
        ("lots", "", "amount_sats", "The amount must be a whole number of sats."),
        ("2.5", "", "amount_sats", "The amount must be a whole number of sats."),
        ("0", "", "amount_sats", RANGE),
        ("-5", "", "amount_sats", RANGE),
        (str(services.MAX_SATS + 1), "", "amount_sats", RANGE),
        ("10", "a" * 640, "memo", "The memo is 640 bytes in UTF-8; an invoice's memo is at most 639 bytes."),
        ("10", "é" * 320, "memo", "The memo is 640 bytes in UTF-8; an invoice's memo is at most 639 bytes."),
    ],
)
def test_a_bad_amount_or_memo_is_refused_with_the_reason_and_nothing_is_made(
    dev_node, staff_client, amount, memo, field, reason
):
    for headers in (HTMX, {}):
        response = staff_client.post(RECEIVE, {"amount_sats": amount, "memo": memo}, headers=headers)
        assert response.status_code == 422
        page = response.content.decode().replace("&#x27;", "'")
        assert f'<ul class="errorlist" id="id_{field}_error"><li>{reason}</li></ul>' in page
        assert response.context["receive_form"].errors[field] == [reason]
        assert 'aria-invalid="true"' in page
        assert ("<html" in page) is (headers == {})  # without htmx, the whole page with the card's errors
    assert not LedgerEntry.objects.exists() and not DevInvoice.objects.exists()


def test_a_node_that_cannot_make_an_invoice_is_a_503_with_the_reason(lnd, staff_client):
    lnd.mode = "error500"
    for headers in (HTMX, {}):
        response = staff_client.post(RECEIVE, {"amount_sats": "100", "memo": "later"}, headers=headers)
        assert response.status_code == 503
        page = response.content.decode()
        assert "No invoice made: The Lightning node cannot make an invoice now:" in page
        assert 'value="later"' in page  # what was typed stays
    assert not LedgerEntry.objects.exists()


def test_with_lnd_the_card_offers_no_simulated_payment(lnd, staff_client):
    response = staff_client.post(RECEIVE, {"amount_sats": "77", "memo": "real money"}, headers=HTMX)
    assert response.status_code == 200
    entry = LedgerEntry.objects.get()
    assert entry.invoice.startswith("lnbcrt770n")
    page = staff_client.get(PAGE, {"invoice": entry.payment_hash}).content.decode()
    assert "Copy invoice" in invoice_card(page) and "Simulate payment" not in page


def test_non_staff_cannot_receive_or_read_the_live_regions(dev_node, plain_client, client):
    for url, method in ((RECEIVE, "post"), (LIVE, "get")):
        refused = getattr(plain_client, method)(url, {"amount_sats": "5"} if method == "post" else None)
        assert refused.status_code == 403 and b"Staff only" in refused.content
        anonymous = getattr(client, method)(url)
        assert anonymous.status_code == 302 and anonymous.url.startswith(reverse("login"))
    assert not LedgerEntry.objects.exists()


def test_receive_requires_post(dev_node, staff_client):
    assert staff_client.get(RECEIVE).status_code == 405


def test_the_page_with_an_invoice_loads_nothing_from_outside(dev_node, staff_client):
    staff_client.post(RECEIVE, {"amount_sats": "500", "memo": "offline"})
    entry = LedgerEntry.objects.get()
    page = staff_client.get(PAGE, {"invoice": entry.payment_hash}).content.decode()
    assert "<svg" in page
    # No address with a host at all: scripts, styles, the QR code and every link are this site's.
    assert "://" not in page and not re.search(r'(?:src|href|action)="//', page)
    for url in re.findall(r'(?:src|href|action)="([^"]*)"', page):
        assert url.startswith(("/", "?", "#")), url


def test_live_answers_every_region_a_payment_changes_out_of_band(dev_node, staff_user, staff_client):
    entry = services.create_invoice_entry(amount_sats=900, memo="live", source="api")
    services.dev_simulate_payment(payment_hash=entry.payment_hash, actor=staff_user)
    response = staff_client.get(LIVE, {"status": "settled", "invoice": entry.payment_hash}, headers=HTMX)
    assert response.status_code == 200
    page = response.content.decode()
    assert '<div id="ledger-entries-list" hx-swap-oob="true">' in page
    assert [e.pk for e in response.context["entries"]] == [entry.pk]
    assert '<section class="card" id="ledger-balance" hx-swap-oob="true">' in page
    assert '<div id="ledger-daily" hx-swap-oob="true">' in page
    assert '<section class="card" id="ledger-earnings" hx-swap-oob="true">' in page
    card = invoice_card(page)
    assert 'hx-swap-oob="true"' in card and ">Settled</span>" in card and "are in the balance" in card
    assert "<svg" not in page and SIMULATE not in page  # paid: nothing left to scan or simulate

    # A bad filter in the page's address: the entries region is left as it is, the rest still comes.
    bad = staff_client.get(LIVE, {"status": "done", "invoice": "not-a-hash"}, headers=HTMX).content.decode()
    assert 'id="ledger-entries-list"' not in bad and 'id="ledger-balance"' in bad and "ledger-invoice" not in bad


def test_simulate_on_the_receive_card_answers_the_card_with_its_new_state(dev_node, staff_client):
    staff_client.post(RECEIVE, {"amount_sats": "300", "memo": "card"})
    entry = LedgerEntry.objects.get()
    url = reverse("ledger:simulate", args=[entry.payment_hash])
    current = {"HX-Current-URL": f"http://testserver{PAGE}?status=pending&invoice={entry.payment_hash}"}

    response = staff_client.post(url, {"invoice": entry.payment_hash}, headers={**HTMX, **current})
    assert response.status_code == 200
    page = response.content.decode()
    assert "Simulated a payment of 300 sats" in page
    assert [e.pk for e in response.context["entries"]] == []  # the page's filter (pending) kept
    assert ">Settled</span>" in invoice_card(page) and 'id="ledger-invoice" data-payment-hash' in page

    again = staff_client.post(url, {"invoice": entry.payment_hash})
    assert again.status_code == 302 and again.url == f"{PAGE}?invoice={entry.payment_hash}"
