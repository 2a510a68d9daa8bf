from datetime import datetime
from typing import Annotated

from django.conf import settings
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status
from ninja.errors import HttpError
from pydantic import field_validator
from pydantic_core import PydanticCustomError

from apps.agents import services as agents
from apps.core.api_contract import ID_MAX, JSON_INTEGER, PAID_ERRORS, VISIBLE_TEXT, ErrorOut, IsoDate, errors
from apps.core.auth import require_staff
from apps.events.services import clean_multiline_text
from apps.ledger import selectors, services
from apps.ledger.backends.base import BackendError
from apps.ledger.models import LedgerEntry, TxStatus, TxType
from apps.ledger.paywall import paid

router = Router(tags=["ledger"])
# Paid endpoints: no account, an L402 token instead (see apps/ledger/paywall.py).
serve_router = Router(tags=["serve (L402)"], auth=None)
ENTRIES_LIMIT_MAX = 500


class BalanceOut(Schema):
    incoming_total_sats: int
    outgoing_total_sats: int
    fees_paid_sats: int
    net_sats: int
    pending_incoming_sats: int
    pending_outgoing_sats: int
    available_sats: int


class EntryOut(Schema):
    id: int
    tx_type: TxType
    status: TxStatus
    payment_hash: str
    amount_sats: int
    fee_sats: int
    memo: str
    invoice: str
    preimage: str
    source: str
    task_id: int | None
    agent_id: int | None
    created_at: datetime
    settled_at: datetime | None
    expires_at: datetime | None
    failure_reason: str


class InvoiceIn(Schema):
    amount_sats: Annotated[int, Field(ge=1, le=services.MAX_SATS), JSON_INTEGER]
    memo: str = Field("", description=f"At most {services.MEMO_MAX_BYTES} bytes in UTF-8 (a BOLT11 description).")

    @field_validator("memo")
    @classmethod
    def memo_fits_an_invoice(cls, value: str) -> str:
        error = services.memo_error(value)
        if error:
            raise PydanticCustomError("invoice_memo", error)
        return value


class InvoiceOut(Schema):
    payment_hash: str
    payment_request: str
    expires_at: datetime


class DevPayIn(Schema):
    payment_request: str = Field(..., min_length=1, max_length=4000)


class DevPayOut(Schema):
    preimage: str
    payment_hash: str


@router.get(
    "/balance",
    response={200: BalanceOut, **errors()},
    summary="The balance (ADR-018), from the settled and pending entries",
)
def ledger_balance(request: HttpRequest) -> dict[str, int]:
    require_staff(request)
    return services.get_balance()


@router.get(
    "/entries", response={200: list[EntryOut], **errors()}, summary="Entries, newest first; page with `before` (an id)"
)
def ledger_entries(
    request: HttpRequest,
    tx_type: TxType | None = Query(None, alias="type"),
    status: TxStatus | None = None,
    since: IsoDate | None = None,
    until: IsoDate | None = None,
    before: int | None = Query(None, ge=1, le=ID_MAX),
    limit: int = Query(50, ge=1, le=ENTRIES_LIMIT_MAX),
) -> list[LedgerEntry]:
    require_staff(request)
    entries = selectors.ledger_entries(tx_type=tx_type, status=status, since=since, until=until, before_id=before)
    return list(entries[:limit])


@router.post(
    "/invoices",
    response={201: InvoiceOut, **errors(400)},
    summary="Ask the node for an invoice (a pending incoming entry)",
)
def ledger_invoice_create(request: HttpRequest, payload: InvoiceIn) -> Status[dict[str, object]]:
    user = require_staff(request)
    try:
        entry = services.create_invoice_entry(
            amount_sats=payload.amount_sats, memo=payload.memo, source=f"api:{user.get_username()}"
        )
    except services.InvalidPayment as exc:
        raise HttpError(422, str(exc)) from exc
    except BackendError as exc:
        raise HttpError(503, f"The Lightning node cannot make an invoice now: {exc}") from exc
    body: dict[str, object] = {
        "payment_hash": entry.payment_hash,
        "payment_request": entry.invoice,
        "expires_at": entry.expires_at,
    }
    return Status(201, body)


@router.post(
    "/dev/pay",
    response={200: DevPayOut, **errors(400, 404, 409)},
    summary="Development only: pay one of our invoices as if from outside, revealing its preimage",
    description="Only with LIGHTNING_BACKEND=dev (404 otherwise). The entry is settled with the preimage.",
)
def ledger_dev_pay(request: HttpRequest, payload: DevPayIn) -> dict[str, str]:
    user = require_staff(request)
    if settings.LIGHTNING_BACKEND != "dev":
        raise HttpError(404, "Simulated payments exist only with LIGHTNING_BACKEND=dev.")
    try:
        entry = services.dev_pay(payment_request=payload.payment_request, actor=user)
    except services.InvalidPayment as exc:
        raise HttpError(422, str(exc)) from exc
    except services.EntryNotFound as exc:
        raise HttpError(404, str(exc)) from exc
    except (services.EntryNotPending, services.NotDevMode) as exc:
        raise HttpError(409, str(exc)) from exc
    except services.NotAllowed as exc:
        raise HttpError(403, str(exc)) from exc
    return {"preimage": entry.preimage, "payment_hash": entry.payment_hash}


class ServeChatIn(Schema):
    message: str = Field(..., min_length=1, max_length=agents.MESSAGE_MAX, json_schema_extra=VISIBLE_TEXT)

    @field_validator("message")
    @classmethod
    def message_says_something(cls, value: str) -> str:
        # Refused here, before the paywall: nobody should be asked to pay for a message that would be refused.
        if not clean_multiline_text(value).strip():
            raise PydanticCustomError("empty", "The message is empty.")
        return value


class PaymentRequiredOut(ErrorOut):
    amount_sats: int
    invoice: str = Field(..., description="The BOLT11 invoice to pay.")
    payment_hash: str
    macaroon: str = Field(..., description="Send it back with the preimage once paid.")
    token_expires_at: datetime = Field(..., description="Until when the token works once paid.")


class ServeChatOut(Schema):
    response: str
    provider: str
    model: str


@serve_router.post(
    "/chat",
    response={200: ServeChatOut, 402: PaymentRequiredOut, **errors(400, 429, common=PAID_ERRORS)},
    summary="Chat with Timmy, paid per token with Lightning (L402)",
    description="Without a token: 402 with an invoice and a macaroon. After paying: `Authorization: L402 "
    "<macaroon>:<preimage>`; the token works until it expires. 401 with the reason for a bad token; 503 when no "
    "model answers (the token stays valid: try again). Timmy draws only on the memories marked public.",
)
@paid("serve/chat")
def serve_chat(request: HttpRequest, payload: ServeChatIn) -> agents.ServedReply:
    try:
        return agents.chat_serve(message=payload.message, payment_hash=request.l402_payment_hash)  # type: ignore[attr-defined]
    except agents.InvalidChatMessage as exc:
        raise HttpError(422, str(exc)) from exc
    except agents.ServeUnavailable as exc:
        raise HttpError(503, f"{exc} Your token stays valid until it expires: try again.") from exc
