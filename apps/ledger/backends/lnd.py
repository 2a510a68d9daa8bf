"""LND over its REST API (LIGHTNING_BACKEND=lnd): https://lightning.engineering/api-docs/api/lnd/

Authenticated by a macaroon (sent hex-encoded in `Grpc-Metadata-macaroon`) over TLS verified against the node's own
self-signed `tls.cert`. Payments use the router's streaming endpoints, which send newline-delimited JSON updates.
"""

from __future__ import annotations

import base64
import json
import math
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings

from apps.ledger.backends.base import (
    BackendError,
    BackendUnavailable,
    Health,
    Invoice,
    InvoiceNotFound,
    InvoiceState,
    InvoiceStatus,
    NodeBalance,
    Payment,
    PaymentState,
)

DEFAULT_FEE_LIMIT_SATS = 100
HEX_DIGITS = frozenset("0123456789abcdef")
PAYMENT_STATES = {"SUCCEEDED": PaymentState.SUCCEEDED, "FAILED": PaymentState.FAILED}
# Older LND versions answered these with HTTP 500 (gRPC code 2) rather than 404 and 401.
NOT_FOUND_MESSAGES = ("unable to locate invoice", "there are no existing invoices", "payment isn't initiated")
AUTH_MESSAGES = ("macaroon", "verification failed", "permission denied")


def _hex_of_base64(value: str) -> str:
    # grpc-gateway writes bytes as standard base64; altchars also accepts the URL-safe alphabet.
    return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_").hex()


def _utc(unix_seconds: Any) -> datetime:
    return datetime.fromtimestamp(int(unix_seconds or 0), UTC)


def _check_hash(payment_hash: str) -> str:
    if len(payment_hash) != 64 or not set(payment_hash) <= HEX_DIGITS:
        raise ValueError(f"A payment hash is 64 lowercase hex characters, not {payment_hash!r}.")
    return payment_hash


def _message_of(body: Any) -> str:
    """LND's own words from `{"code", "message"}`, or from a stream's `{"error": {...}}`."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("message") or error:
            return str(body.get("message") or error)
    return json.dumps(body)[:200]


def _error_message(response: httpx.Response) -> str:
    try:
        return _message_of(response.json())
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase


class _Cutoff:
    """Shuts a streaming response's socket at a deadline.

    httpx's read timeout applies to each read, so a stream that sends an update now and then could otherwise keep
    a caller waiting well past its deadline; shutting the socket down wakes the blocked read at once.
    """

    def __init__(self, response: httpx.Response, seconds: float) -> None:
        stream = response.extensions.get("network_stream")
        self._socket: socket.socket | None = stream.get_extra_info("socket") if stream is not None else None
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        if self._socket is not None:
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            # Once the caller is done the connection may be back in the pool, serving someone else.
            if self._done or self._socket is None:
                return
            # socket.socket's own shutdown, not SSLSocket's, which would also drop its TLS state under the reader.
            with suppress(OSError):
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)

    def cancel(self) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


class LndBackend:
    name = "lnd"
    # How long lookup_payment listens for a final status after LND says the payment is still in flight.
    lookup_wait_seconds = 0.5

    def __init__(
        self,
        rest_url: str,
        macaroon_path: str,
        tls_cert_path: str,
        timeout_seconds: float = 10,
        *,
        fee_limit_sats: int = DEFAULT_FEE_LIMIT_SATS,
    ) -> None:
        rest_url = rest_url.strip().rstrip("/")
        # LND serves REST over TLS unless told otherwise, so a bare host:port means https.
        self.rest_url = rest_url if "://" in rest_url or not rest_url else f"https://{rest_url}"
        self.macaroon_path = macaroon_path
        self.tls_cert_path = tls_cert_path
        self.timeout_seconds = timeout_seconds
        self.fee_limit_sats = fee_limit_sats
        self._macaroon_hex = ""
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()

    @classmethod
    def from_settings(cls) -> LndBackend:
        return cls(
            rest_url=getattr(settings, "LND_REST_URL", ""),
            macaroon_path=getattr(settings, "LND_MACAROON_PATH", ""),
            tls_cert_path=getattr(settings, "LND_TLS_CERT_PATH", ""),
        )

    def __repr__(self) -> str:
        return f"LndBackend(rest_url={self.rest_url!r})"

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # The LightningBackend protocol.

    def create_invoice(self, *, amount_sats: int, memo: str, expiry_seconds: int) -> Invoice:
        # LND stamps creation_date in whole seconds, no earlier than this: expires_at is never later than LND's.
        created = datetime.now(UTC).replace(microsecond=0)
        body = {"value": str(amount_sats), "memo": memo, "expiry": str(expiry_seconds)}
        data = self._json("POST", "/v1/invoices", body=body)
        return Invoice(
            payment_hash=_hex_of_base64(data["r_hash"]),
            payment_request=data["payment_request"],
            amount_sats=amount_sats,
            memo=memo,
            expires_at=created + timedelta(seconds=expiry_seconds),
        )

    def lookup_invoice(self, payment_hash: str) -> InvoiceStatus:
        data = self._json(
            "GET", f"/v1/invoice/{_check_hash(payment_hash)}", not_found=f"LND has no invoice {payment_hash}"
        )
        state = data.get("state")
        if state == "SETTLED":
            # What arrived, which a payer may round up beyond the invoice's value (and any amount for a zero one).
            return InvoiceStatus(
                payment_hash,
                InvoiceState.SETTLED,
                int(data.get("amt_paid_sat") or data.get("value") or 0),
                preimage=_hex_of_base64(data.get("r_preimage") or ""),
                settled_at=_utc(data.get("settle_date")),
            )
        amount_sats = int(data.get("value") or 0)
        if state == "CANCELED":
            # LND cancels an invoice when it expires unpaid; the ledger tells that apart from a deliberate cancel.
            expires_at = _utc(data.get("creation_date")) + timedelta(seconds=int(data.get("expiry") or 0))
            expired = expires_at <= datetime.now(UTC)
            return InvoiceStatus(payment_hash, InvoiceState.EXPIRED if expired else InvoiceState.CANCELED, amount_sats)
        if state in ("OPEN", "ACCEPTED"):
            return InvoiceStatus(payment_hash, InvoiceState.OPEN, amount_sats)
        raise BackendError(f"LND reported invoice {payment_hash} in an unknown state {state!r}.")

    def pay_invoice(self, payment_request: str, *, timeout_seconds: int) -> Payment:
        """Pay and follow LND's updates up to timeout_seconds (also LND's own limit on new attempts).

        IN_FLIGHT when no final status came in time; BackendUnavailable when LND said nothing at all, in which case
        the payment may or may not have started.
        """
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive: LND refuses a payment without a time limit.")
        body = {
            "payment_request": payment_request.strip(),
            "timeout_seconds": timeout_seconds,
            "fee_limit_sat": str(self.fee_limit_sats),
            "no_inflight_updates": False,
        }
        return self._follow_payment(
            "POST", "/v2/router/send", body=body, first_seconds=timeout_seconds, wait=timeout_seconds
        )

    def lookup_payment(self, payment_hash: str) -> Payment:
        # A bytes field in a REST path is base64 to LND's gateway (URL-safe: a "/" would split the path); hex would
        # decode to 48 wrong bytes. LND sends the payment's current status at once, then each change.
        hash_b64 = base64.urlsafe_b64encode(bytes.fromhex(_check_hash(payment_hash))).decode()
        return self._follow_payment(
            "GET",
            f"/v2/router/track/{hash_b64}",
            first_seconds=self.timeout_seconds,
            wait=self.lookup_wait_seconds,
            not_found=f"LND made no payment {payment_hash}",
        )

    def balance(self) -> NodeBalance:
        data = self._json("GET", "/v1/balance/channels")
        local = (data.get("local_balance") or {}).get("sat", data.get("balance"))
        remote = (data.get("remote_balance") or {}).get("sat")
        return NodeBalance(local_sats=int(local or 0), remote_sats=None if remote is None else int(remote))

    def health(self) -> Health:
        try:
            data = self._json("GET", "/v1/getinfo")
        except BackendError as exc:
            return Health(False, str(exc))
        node = f"LND {data.get('alias') or '?'} ({str(data.get('identity_pubkey') or '')[:16]}…)"
        if not data.get("synced_to_chain"):
            return Health(False, f"{node} is not synced to the chain (block {data.get('block_height', '?')}).")
        return Health(True, f"{node} is synced to the chain at block {data.get('block_height', '?')}.")

    # HTTP.

    def _get_client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = self._new_client()
            return self._client

    def _new_client(self) -> httpx.Client:
        if not self.rest_url:
            raise BackendError("No LND REST URL is configured.")
        if not self.macaroon_path:
            raise BackendError("No LND macaroon file is configured.")
        try:
            macaroon = Path(self.macaroon_path).read_bytes()
        except OSError as exc:
            raise BackendError(f"Cannot read the LND macaroon {self.macaroon_path}: {exc.strerror or exc}.") from exc
        verify: ssl.SSLContext | bool = True  # no cert given: the system's CAs, e.g. LND behind a proxy
        if self.tls_cert_path:
            try:
                verify = ssl.create_default_context(cafile=self.tls_cert_path)
            except (OSError, ssl.SSLError) as exc:
                raise BackendError(f"Cannot load the LND TLS certificate {self.tls_cert_path}: {exc}.") from exc
        self._macaroon_hex = macaroon.hex()
        return httpx.Client(
            base_url=self.rest_url,
            headers={"Grpc-Metadata-macaroon": self._macaroon_hex},
            verify=verify,
            timeout=self.timeout_seconds,
        )

    def _json(self, method: str, path: str, *, body: dict[str, Any] | None = None, not_found: str = "") -> Any:
        client = self._get_client()
        with self._transport_errors():
            response = client.request(method, path, json=body)
        if response.status_code != 200:
            raise self._refusal(response, not_found=not_found)
        try:
            return response.json()
        except ValueError as exc:
            raise BackendUnavailable(f"LND answered {method} {path} with something other than JSON.") from exc

    def _follow_payment(
        self,
        method: str,
        path: str,
        *,
        first_seconds: float,
        wait: float,
        body: dict[str, Any] | None = None,
        not_found: str = "",
    ) -> Payment:
        """Read a router stream until a final status, or until `wait` seconds have passed since the request: then
        the last IN_FLIGHT update. Its first update may take up to `first_seconds`."""
        deadline = time.monotonic() + wait
        client = self._get_client()
        timeout = httpx.Timeout(self.timeout_seconds, read=first_seconds)
        last: Payment | None = None
        cutoff: _Cutoff | None = None
        with self._transport_errors(), client.stream(method, path, json=body, timeout=timeout) as response:
            if response.status_code != 200:
                response.read()
                raise self._refusal(response, not_found=not_found)
            try:
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        update = json.loads(line)
                    except ValueError as exc:
                        raise BackendUnavailable(f"LND sent a payment update that is not JSON: {line[:200]!r}") from exc
                    if "result" not in update:
                        if last is not None:  # the payment exists; what became of it is for a later lookup
                            return last
                        raise BackendError(f"LND refused the payment: {self._scrub(_message_of(update))}")
                    payment = self._payment(update["result"])
                    if payment.state != PaymentState.IN_FLIGHT:
                        return payment
                    last = payment
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return last
                    if cutoff is None:
                        cutoff = _Cutoff(response, remaining)
            except httpx.TransportError:
                # The deadline's cutoff, a read timeout or a lost connection: once LND has named the payment, an
                # unknown outcome is IN_FLIGHT; before that, the payment may not even exist.
                if last is not None:
                    return last
                raise
            finally:
                if cutoff is not None:
                    cutoff.cancel()
        if last is None:
            raise BackendUnavailable(f"LND closed the payment stream of {path} without a status.")
        return last

    def _payment(self, result: dict[str, Any]) -> Payment:
        state = PAYMENT_STATES.get(result.get("status", ""), PaymentState.IN_FLIGHT)  # INITIATED is in flight too
        fee_msat = result.get("fee_msat")
        # fee_sat is rounded down; the ledger should never charge less than the node paid.
        fee_sats = math.ceil(int(fee_msat) / 1000) if fee_msat is not None else int(result.get("fee_sat") or 0)
        return Payment(
            payment_hash=result.get("payment_hash", ""),
            state=state,
            preimage=result.get("payment_preimage", "") if state == PaymentState.SUCCEEDED else "",
            fee_sats=fee_sats if state == PaymentState.SUCCEEDED else 0,
            failure_reason=result.get("failure_reason", "") if state == PaymentState.FAILED else "",
        )

    @contextmanager
    def _transport_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(f"LND at {self.rest_url} did not answer in time ({type(exc).__name__}).") from exc
        except httpx.UnsupportedProtocol as exc:
            raise BackendError(f"The LND REST URL {self.rest_url!r} is not http(s).") from exc
        except httpx.ConnectError as exc:
            raise BackendUnavailable(f"Cannot connect to LND at {self.rest_url}: {exc}") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"Lost the connection to LND at {self.rest_url}: {exc}") from exc

    def _refusal(self, response: httpx.Response, *, not_found: str) -> BackendError:
        status = response.status_code
        message = self._scrub(_error_message(response))
        lowered = message.lower()
        if not_found and (status == 404 or any(m in lowered for m in NOT_FOUND_MESSAGES)):
            return InvoiceNotFound(f"{not_found}: {message}")
        if status in (401, 403) or any(m in lowered for m in AUTH_MESSAGES):
            return BackendError(f"LND refused the macaroon (HTTP {status}): {message}")
        if status >= 500:
            return BackendUnavailable(f"LND failed (HTTP {status}): {message}")
        return BackendError(f"LND refused the request (HTTP {status}): {message}")

    def _scrub(self, message: str) -> str:
        # LND does not echo the macaroon, but a proxy in front of it might; it must not reach logs or the UI.
        return message.replace(self._macaroon_hex, "<macaroon>") if self._macaroon_hex else message
