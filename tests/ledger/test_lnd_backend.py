"""LndBackend against a local server that speaks LND's REST API over TLS (tests/lnd_server.py); no database."""

import hashlib
import secrets
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import bolt11
import pytest

from apps.ledger.backends.base import (
    BackendError,
    BackendUnavailable,
    InvoiceNotFound,
    InvoiceState,
    PaymentState,
)
from apps.ledger.backends.lnd import LndBackend
from tests.lnd_server import LndServer, refused_url

TEST_SECONDS = 10


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    """Fail a test that hangs rather than hang the run."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"the test took longer than {TEST_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, TEST_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def lnd() -> Iterator[LndServer]:
    with LndServer() as server:
        yield server


@pytest.fixture
def backend(lnd: LndServer) -> Iterator[LndBackend]:
    backend = LndBackend(lnd.url, lnd.macaroon_path, lnd.cert_path, timeout_seconds=2)
    yield backend
    backend.close()


def sha256_hex(preimage: str) -> str:
    return hashlib.sha256(bytes.fromhex(preimage)).hexdigest()


def test_created_invoice_reads_back_open_without_its_preimage(backend: LndBackend) -> None:
    before = datetime.now(UTC)
    invoice = backend.create_invoice(amount_sats=1_500, memo="agent task 7", expiry_seconds=600)

    assert bolt11.decode(invoice.payment_request).payment_hash == invoice.payment_hash
    assert (invoice.amount_sats, invoice.memo) == (1_500, "agent task 7")
    assert invoice.expires_at.tzinfo is not None
    assert before + timedelta(seconds=598) <= invoice.expires_at <= before + timedelta(seconds=600)
    status = backend.lookup_invoice(invoice.payment_hash)
    assert (status.state, status.amount_sats, status.preimage, status.settled_at) == (
        InvoiceState.OPEN,
        1_500,
        "",
        None,
    )


def test_settled_invoice_has_the_preimage_of_its_payment_hash(lnd: LndServer, backend: LndBackend) -> None:
    invoice = backend.create_invoice(amount_sats=1_000, memo="", expiry_seconds=600)
    lnd.settle(invoice.payment_hash)

    status = backend.lookup_invoice(invoice.payment_hash)

    assert status.state == InvoiceState.SETTLED
    assert sha256_hex(status.preimage) == invoice.payment_hash
    assert status.amount_sats == 1_000
    assert status.settled_at is not None and status.settled_at.utcoffset() == timedelta(0)
    assert abs(status.settled_at - datetime.now(UTC)) < timedelta(seconds=5)


def test_settled_invoice_reports_what_was_paid(lnd: LndServer, backend: LndBackend) -> None:
    invoice = backend.create_invoice(amount_sats=1_000, memo="", expiry_seconds=600)
    lnd.settle(invoice.payment_hash, amount_sats=1_010)

    assert backend.lookup_invoice(invoice.payment_hash).amount_sats == 1_010


def test_invoice_past_its_expiry_reads_as_expired(lnd: LndServer, backend: LndBackend) -> None:
    invoice = backend.create_invoice(amount_sats=1_000, memo="", expiry_seconds=600)
    lnd.expire(invoice.payment_hash)

    status = backend.lookup_invoice(invoice.payment_hash)

    assert (status.state, status.preimage) == (InvoiceState.EXPIRED, "")


def test_invoice_canceled_before_its_expiry_reads_as_canceled(lnd: LndServer, backend: LndBackend) -> None:
    invoice = backend.create_invoice(amount_sats=1_000, memo="", expiry_seconds=600)
    lnd.cancel(invoice.payment_hash)

    assert backend.lookup_invoice(invoice.payment_hash).state == InvoiceState.CANCELED


@pytest.mark.parametrize("legacy_errors", [False, True], ids=["404", "older-lnd-500"])
def test_unknown_invoice_is_not_found(lnd: LndServer, backend: LndBackend, legacy_errors: bool) -> None:
    lnd.legacy_errors = legacy_errors
    backend.create_invoice(amount_sats=1, memo="", expiry_seconds=600)

    with pytest.raises(InvoiceNotFound, match="unable to locate invoice"):
        backend.lookup_invoice(secrets.token_hex(32))


def test_malformed_payment_hash_is_refused_before_asking_the_node(lnd: LndServer, backend: LndBackend) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        backend.lookup_invoice("../getinfo")

    assert sum(lnd.requests.values()) == 0


@pytest.mark.parametrize("legacy_errors", [False, True], ids=["401", "older-lnd-500"])
def test_wrong_macaroon_is_refused_with_an_error_that_does_not_contain_it(
    lnd: LndServer, tmp_path: Path, legacy_errors: bool
) -> None:
    lnd.legacy_errors = legacy_errors
    wrong = secrets.token_bytes(96)
    path = tmp_path / "other.macaroon"
    path.write_bytes(wrong)
    backend = LndBackend(lnd.url, str(path), lnd.cert_path, timeout_seconds=2)

    with pytest.raises(BackendError) as refused:
        backend.create_invoice(amount_sats=1, memo="", expiry_seconds=600)

    assert not isinstance(refused.value, BackendUnavailable)  # refused for sure: nothing was created
    message = str(refused.value)
    assert "refused the macaroon" in message and "signature mismatch" in message
    for secret in (wrong.hex(), lnd.macaroon_hex):
        assert secret not in message and secret not in repr(refused.value) and secret not in repr(backend)
    health = backend.health()
    assert not health.ok and "macaroon" in health.detail
    backend.close()


def test_unreadable_macaroon_file_is_a_clear_error(lnd: LndServer, tmp_path: Path) -> None:
    missing = f"{tmp_path}/admin.macaroon"
    backend = LndBackend(lnd.url, missing, lnd.cert_path)

    with pytest.raises(BackendError, match=f"Cannot read the LND macaroon {missing}"):
        backend.balance()

    assert sum(lnd.requests.values()) == 0


def test_refused_connection_is_unavailable_at_once(lnd: LndServer) -> None:
    backend = LndBackend(refused_url(), lnd.macaroon_path, lnd.cert_path, timeout_seconds=2)
    started = time.monotonic()

    with pytest.raises(BackendUnavailable, match="Cannot connect to LND"):
        backend.create_invoice(amount_sats=1, memo="", expiry_seconds=600)

    assert time.monotonic() - started < 1
    assert not backend.health().ok


@pytest.mark.parametrize("call", ["create_invoice", "lookup_invoice", "pay_invoice", "lookup_payment", "health"])
def test_hanging_node_is_unavailable_within_the_timeout(lnd: LndServer, call: str) -> None:
    backend = LndBackend(lnd.url, lnd.macaroon_path, lnd.cert_path, timeout_seconds=0.5)
    payment_request = lnd.external_invoice(10)
    lnd.mode = "hang"
    calls = {
        "create_invoice": lambda: backend.create_invoice(amount_sats=1, memo="", expiry_seconds=600),
        "lookup_invoice": lambda: backend.lookup_invoice(secrets.token_hex(32)),
        "pay_invoice": lambda: backend.pay_invoice(payment_request, timeout_seconds=1),
        "lookup_payment": lambda: backend.lookup_payment(secrets.token_hex(32)),
    }
    started = time.monotonic()

    if call == "health":
        health = backend.health()
        assert not health.ok and "did not answer in time" in health.detail
    else:
        with pytest.raises(BackendUnavailable, match="did not answer in time"):
            calls[call]()

    limit = 1.5 if call == "pay_invoice" else 1.0  # a payment waits for its own timeout, 1 s here
    assert time.monotonic() - started < limit
    backend.close()


def test_node_error_is_unavailable_with_its_message(lnd: LndServer, backend: LndBackend) -> None:
    lnd.mode = "error500"

    with pytest.raises(BackendUnavailable, match=r"HTTP 500.*error500 mode"):
        backend.balance()


def test_node_certificate_is_verified(lnd: LndServer) -> None:
    # No certificate given means the system's CAs, which do not trust the node's self-signed one.
    backend = LndBackend(lnd.url, lnd.macaroon_path, "", timeout_seconds=2)

    with pytest.raises(BackendUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        backend.balance()


def test_payment_in_flight_past_the_timeout_is_later_found_failed(lnd: LndServer, backend: LndBackend) -> None:
    lnd.plan_payments(outcome="FAILED", in_flight_seconds=1.8, failure_reason="FAILURE_REASON_NO_ROUTE")
    backend.lookup_wait_seconds = 0.3
    payment_request = lnd.external_invoice(2_000)
    payment_hash = bolt11.decode(payment_request).payment_hash
    started = time.monotonic()

    payment = backend.pay_invoice(payment_request, timeout_seconds=1)

    assert 0.9 < time.monotonic() - started < 1.4
    assert (payment.payment_hash, payment.state, payment.preimage) == (payment_hash, PaymentState.IN_FLIGHT, "")
    looked_up = time.monotonic()
    assert backend.lookup_payment(payment_hash).state == PaymentState.IN_FLIGHT
    # Well before the backend's 2 s read timeout: lookup_payment listens only briefly.
    assert time.monotonic() - looked_up < backend.lookup_wait_seconds + 0.4

    time.sleep(max(0.0, started + 1.9 - time.monotonic()))
    failed = backend.lookup_payment(payment_hash)
    assert (failed.state, failed.failure_reason, failed.preimage) == (
        PaymentState.FAILED,
        "FAILURE_REASON_NO_ROUTE",
        "",
    )


def test_lookup_waits_briefly_for_a_payment_about_to_finish(lnd: LndServer, backend: LndBackend) -> None:
    lnd.plan_payments(outcome="SUCCEEDED", in_flight_seconds=1.3, fee_sats=2)
    backend.lookup_wait_seconds = 1.0
    payment_request = lnd.external_invoice(500)
    assert backend.pay_invoice(payment_request, timeout_seconds=1).state == PaymentState.IN_FLIGHT

    payment = backend.lookup_payment(bolt11.decode(payment_request).payment_hash)

    assert (payment.state, payment.fee_sats) == (PaymentState.SUCCEEDED, 2)


def test_successful_payment_returns_its_preimage_and_fee(lnd: LndServer, backend: LndBackend) -> None:
    lnd.plan_payments(outcome="SUCCEEDED", in_flight_seconds=0.2, fee_sats=3)
    payment_request = lnd.external_invoice(10_000)

    payment = backend.pay_invoice(payment_request, timeout_seconds=5)

    assert payment.state == PaymentState.SUCCEEDED
    assert payment.payment_hash == bolt11.decode(payment_request).payment_hash
    assert sha256_hex(payment.preimage) == payment.payment_hash
    assert (payment.fee_sats, payment.failure_reason) == (3, "")
    assert backend.lookup_payment(payment.payment_hash) == payment


def test_paying_an_invoice_of_the_node_settles_it(backend: LndBackend) -> None:
    invoice = backend.create_invoice(amount_sats=700, memo="self", expiry_seconds=600)

    payment = backend.pay_invoice(invoice.payment_request, timeout_seconds=5)

    status = backend.lookup_invoice(invoice.payment_hash)
    assert (payment.state, status.state) == (PaymentState.SUCCEEDED, InvoiceState.SETTLED)
    assert payment.preimage == status.preimage


def test_paying_an_already_paid_invoice_is_refused(backend: LndBackend, lnd: LndServer) -> None:
    payment_request = lnd.external_invoice(100)
    backend.pay_invoice(payment_request, timeout_seconds=5)

    with pytest.raises(BackendError, match="already paid") as refused:
        backend.pay_invoice(payment_request, timeout_seconds=5)

    assert not isinstance(refused.value, BackendUnavailable)


def test_paying_an_expired_invoice_fails(lnd: LndServer, backend: LndBackend) -> None:
    invoice = backend.create_invoice(amount_sats=100, memo="", expiry_seconds=600)
    lnd.expire(invoice.payment_hash)

    payment = backend.pay_invoice(invoice.payment_request, timeout_seconds=5)

    assert (payment.state, payment.failure_reason) == (PaymentState.FAILED, "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS")


def test_unknown_payment_is_not_found(backend: LndBackend) -> None:
    with pytest.raises(InvoiceNotFound, match="payment isn't initiated"):
        backend.lookup_payment(secrets.token_hex(32))


def test_balance_counts_what_the_node_received_and_paid(lnd: LndServer, backend: LndBackend) -> None:
    lnd.local_sats, lnd.remote_sats = 50_000, 20_000
    invoice = backend.create_invoice(amount_sats=1_000, memo="", expiry_seconds=600)
    lnd.settle(invoice.payment_hash)
    lnd.plan_payments(fee_sats=5)
    backend.pay_invoice(lnd.external_invoice(300), timeout_seconds=5)

    balance = backend.balance()

    assert (balance.local_sats, balance.remote_sats) == (50_000 + 1_000 - 305, 20_000)


def test_health_reports_a_synced_node(lnd: LndServer, backend: LndBackend) -> None:
    health = backend.health()

    assert health.ok
    assert "timmy-test-lnd" in health.detail and lnd.pubkey[:16] in health.detail


def test_health_reports_a_node_not_synced_to_the_chain(lnd: LndServer, backend: LndBackend) -> None:
    lnd.synced_to_chain = False

    health = backend.health()

    assert not health.ok and "not synced" in health.detail


def test_from_settings_reads_the_lnd_settings(settings: Any, lnd: LndServer) -> None:
    settings.LND_REST_URL = lnd.url
    settings.LND_MACAROON_PATH = lnd.macaroon_path
    settings.LND_TLS_CERT_PATH = lnd.cert_path

    backend = LndBackend.from_settings()

    assert backend.health().ok
    backend.close()
