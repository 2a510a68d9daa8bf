"""An invoice's memo is its BOLT11 description, which holds at most 639 bytes of UTF-8: longer memos are refused
with the limit in bytes, by the service (so every caller) and by the API (422), and nothing is written."""

import bolt11
import pytest

from apps.ledger import services
from apps.ledger.models import DevInvoice, LedgerEntry

FITS = [pytest.param("a" * 639, id="639 ASCII bytes"), pytest.param("é" * 319, id="319 x é (638 bytes)")]
TOO_LONG = [pytest.param("a" * 640, id="640 ASCII bytes"), pytest.param("é" * 320, id="320 x é (640 bytes)")]


@pytest.mark.parametrize("memo", FITS)
def test_a_memo_of_up_to_639_bytes_becomes_the_invoice_description(dev_node, memo):
    entry = services.create_invoice_entry(amount_sats=10, memo=memo, source="test")
    assert entry.memo == memo
    assert bolt11.decode(entry.invoice).description == memo


@pytest.mark.parametrize("memo", TOO_LONG)
def test_a_memo_over_639_bytes_is_refused_by_the_service_before_anything_is_written(dev_node, memo):
    with pytest.raises(services.InvalidPayment, match=r"The memo is 640 bytes in UTF-8; .* at most 639 bytes"):
        services.create_invoice_entry(amount_sats=10, memo=memo, source="test")
    assert not LedgerEntry.objects.exists()
    assert not DevInvoice.objects.exists()


@pytest.mark.parametrize("memo", FITS)
def test_the_api_makes_an_invoice_with_a_memo_of_up_to_639_bytes(dev_node, api_client, memo):
    response = api_client.post(
        "/api/v1/ledger/invoices", {"amount_sats": 10, "memo": memo}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    assert bolt11.decode(response.json()["payment_request"]).description == memo


@pytest.mark.parametrize("memo", TOO_LONG)
def test_invoice_memo_over_639_bytes_is_422(dev_node, api_client, memo):
    response = api_client.post(
        "/api/v1/ledger/invoices", {"amount_sats": 10, "memo": memo}, content_type="application/json"
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"][-1] == "memo"
    assert error["msg"] == "The memo is 640 bytes in UTF-8; an invoice's memo is at most 639 bytes."
    assert not LedgerEntry.objects.exists()


def test_the_limit_applies_to_the_memo_as_stored_without_surrounding_blanks(dev_node, api_client):
    memo = "  " + "a" * 639 + "\n"
    response = api_client.post(
        "/api/v1/ledger/invoices", {"amount_sats": 10, "memo": memo}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    assert LedgerEntry.objects.get().memo == "a" * 639
