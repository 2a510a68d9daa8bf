"""L402 for paid API endpoints: `@paid("serve/chat")` on a view.

A request without a token gets 402 with an invoice and a macaroon bound to its payment hash, the endpoint and an
expiry (`WWW-Authenticate: L402 macaroon="…", invoice="…"`). After paying, the client sends
`Authorization: L402 <macaroon>:<preimage>`; the token is checked without the database (signature, caveats,
sha256(preimage) = payment hash), then the invoice's ledger entry is settled with the preimage if it is still
pending (with LND, only once the node agrees), which is how earnings reach the ledger. A token stays usable until
it expires. Challenges are rate-limited per client address: each one creates an invoice.
"""

import json
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from apps.ledger import l402, services
from apps.ledger.backends.base import BackendError
from apps.ledger.models import LedgerEntry, TxStatus
from apps.ledger.selectors import L402_SOURCE_PREFIX

View = Callable[..., Any]


def _too_many(request: HttpRequest) -> int:
    """Seconds until the client may ask again, or 0. A fixed one-minute window per address, in the cache (per
    process without a shared cache: still a bound)."""
    now = timezone.now()
    key = f"l402-challenges:{request.META.get('REMOTE_ADDR', '')}:{now:%Y%m%d%H%M}"
    cache.add(key, 0, timeout=120)
    try:
        count = cache.incr(key)
    except ValueError:  # evicted between add and incr
        cache.set(key, 1, timeout=120)
        count = 1
    if count > settings.L402_CHALLENGES_PER_MINUTE:
        return 60 - now.second
    return 0


def _error(status: int, detail: str, **headers: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status, headers=headers)


def _challenge(request: HttpRequest, endpoint: str, price_sats: int) -> HttpResponse:
    wait = _too_many(request)
    if wait:
        detail = f"Too many payment requests from this address; try again in {wait} s."
        return _error(429, detail, **{"Retry-After": str(wait)})
    try:
        entry = services.create_invoice_entry(
            amount_sats=price_sats, memo=f"L402: {endpoint}", source=L402_SOURCE_PREFIX + endpoint
        )
    except BackendError as exc:
        return _error(503, f"The Lightning node cannot make an invoice now: {exc}")
    expires_at = timezone.now() + timedelta(seconds=settings.L402_TOKEN_TTL_SECONDS)
    macaroon = l402.mint(payment_hash=entry.payment_hash, endpoint=endpoint, expires_at=expires_at)
    body = {
        "detail": f"Payment required: {price_sats} sats. Pay the invoice, then send "
        "`Authorization: L402 <macaroon>:<preimage>`.",
        "amount_sats": price_sats,
        "invoice": entry.invoice,
        "payment_hash": entry.payment_hash,
        "macaroon": macaroon,
        "token_expires_at": expires_at.isoformat(),
    }
    response = HttpResponse(json.dumps(body), status=402, content_type="application/json")
    response["WWW-Authenticate"] = l402.challenge_header(macaroon, entry.invoice)
    return response


def _record_payment(payment_hash: str, authorization: str) -> str:
    """Settle the invoice's entry with the token's preimage; "" when settled (or already), else why not."""
    preimage = authorization.rpartition(":")[2].strip().lower()
    entry = LedgerEntry.objects.filter(payment_hash=payment_hash).only("status").first()
    if entry is None or entry.status == TxStatus.SETTLED:
        return ""
    try:
        services.mark_settled(payment_hash=payment_hash, preimage=preimage)
    except services.NotSettledByNode as exc:
        return str(exc)
    except services.EntryNotPending as exc:
        return f"The invoice of this token is no longer payable: {exc}"
    except BackendError as exc:
        return f"The Lightning node cannot confirm the payment now: {exc}"
    return ""


def paid(endpoint: str, *, price_sats: int | None = None) -> Callable[[View], View]:
    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            authorization = request.headers.get("Authorization")
            if (authorization or "").split(" ", 1)[0].lower() not in l402.SCHEMES:
                # No token (or another scheme's): this is where paying starts.
                return _challenge(request, endpoint, price_sats or settings.L402_PRICE_SATS)
            try:
                payment_hash = l402.verify(authorization, endpoint=endpoint, now=timezone.now())
            except l402.L402Invalid as exc:
                return _error(401, str(exc), **{"WWW-Authenticate": 'L402 error="invalid_token"'})
            problem = _record_payment(payment_hash, authorization or "")
            if problem:
                return _error(401, problem, **{"WWW-Authenticate": 'L402 error="not_paid"'})
            request.l402_payment_hash = payment_hash  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return wrapper

    return decorate
