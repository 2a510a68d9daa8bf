"""The whole L402 flow over real HTTP, from a client that knows only HTTP, pymacaroons and hashlib: ask, get 402
with an invoice and a macaroon, pay (through the dev node's pay endpoint, standing in for a wallet), use the token.
Timmy's answers come from a local server that speaks Ollama's protocol."""

import base64
import hashlib
import re
import threading
from datetime import timedelta
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from django.utils import timezone
from pymacaroons import Macaroon

from apps.agents import prompts
from apps.agents.worker import run_assigned_tasks
from apps.core.services import api_token_create
from apps.events.models import Event
from apps.ledger import l402, selectors, services
from apps.ledger.models import LedgerEntry, TxStatus
from apps.memory import services as memory
from apps.memory.models import MemoryEntry
from apps.swarm.models import Task
from tests.agents.conftest import provider_at
from tests.factories import AgentFactory, StaffFactory, TaskFactory
from tests.llm_servers import OllamaServer

SERVE = "/api/v1/serve/chat"
CHALLENGE = re.compile(r'L402 macaroon="(?P<macaroon>[^"]+)", invoice="(?P<invoice>[^"]+)"')


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http(dev_node, transactional_db):
    """The site over real HTTP on a loopback port, served by a thread of this process (so it sees this test's
    database and settings). Not pytest-django's live_server: its session-wide settings override would outlive
    the settings changed here."""
    cache.clear()
    server = make_server("127.0.0.1", 0, WSGIHandler(), handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=30) as client:
            yield client
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def wallet(http):
    """Pays invoices through the dev node's endpoint (a staff token): returns the preimage, as a wallet would."""
    token = api_token_create(user=StaffFactory(username="wallet"), name="wallet")[1]

    def pay(invoice: str) -> str:
        response = http.post(
            "/api/v1/ledger/dev/pay", json={"payment_request": invoice}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
        return response.json()["preimage"]

    return pay


@pytest.fixture
def llm(transactional_db):
    with OllamaServer() as server:
        provider_at("ollama", server.url, model=server.models[0])
        yield server


def ask(http: httpx.Client, authorization: str | None = None, message: str = "What is a sat?") -> httpx.Response:
    headers = {"Authorization": authorization} if authorization else {}
    return http.post(SERVE, json={"message": message}, headers=headers)


def challenge(http: httpx.Client) -> tuple[str, str]:
    response = ask(http)
    assert response.status_code == 402, response.text
    found = CHALLENGE.fullmatch(response.headers["WWW-Authenticate"])
    assert found is not None
    return found["macaroon"], found["invoice"]


def test_a_client_pays_the_invoice_and_gets_timmys_answer_with_the_token(http, wallet, llm, settings):
    macaroon, invoice = challenge(http)
    # What the client can read from the macaroon alone: the payment hash it is bound to.
    caveats = [c.caveat_id_bytes.decode() for c in Macaroon.deserialize(macaroon).first_party_caveats()]
    [payment_hash] = [c.split(" = ")[1] for c in caveats if c.startswith("payment_hash")]
    entry = LedgerEntry.objects.get(payment_hash=payment_hash)
    assert (entry.status, entry.amount_sats, entry.source) == (
        TxStatus.PENDING,
        settings.L402_PRICE_SATS,
        "l402:serve/chat",
    )

    preimage = wallet(invoice)
    assert hashlib.sha256(bytes.fromhex(preimage)).hexdigest() == payment_hash
    answered = ask(http, f"L402 {macaroon}:{preimage}")
    assert answered.status_code == 200, answered.text
    assert answered.json() == {"response": "Echo: What is a sat?", "provider": "ollama", "model": llm.models[0]}
    # The token keeps working until it expires; the earnings are on the ledger once.
    assert ask(http, f"L402 {macaroon}:{preimage}", "Again?").json()["response"] == "Echo: Again?"
    assert LedgerEntry.objects.get(payment_hash=payment_hash).status == TxStatus.SETTLED
    [earned] = selectors.earnings_by_endpoint()
    assert (earned.endpoint, earned.payments, earned.sats) == ("serve/chat", 1, settings.L402_PRICE_SATS)


def test_a_paying_stranger_cannot_get_a_staff_tasks_result_or_a_shared_memory_into_the_prompt(http, wallet, llm):
    # A staff user's task, researched by Echo: its result is remembered, shared, for the swarm's later tasks.
    task = TaskFactory(
        description="Research suppliers for Project Nightjar; our budget is 40000 sats",
        status=Task.Status.ASSIGNED,
        assigned_agent=AgentFactory(name="echo", persona="echo"),
        winning_bid_sats=80,
        assigned_at=timezone.now(),
    )
    assert run_assigned_tasks(timezone.now()) == 1
    assert MemoryEntry.objects.get(task=task).is_shared
    memory.store_memory(content="Project Nightjar launches on 3 March.", context_type="fact", source="page")
    macaroon, invoice = challenge(http)
    token = f"L402 {macaroon}:{wallet(invoice)}"

    asked = ask(http, token, "What is the budget of Project Nightjar?")
    assert asked.status_code == 200, asked.text
    # What the model was sent: Timmy's prompt alone, nothing remembered.
    assert llm.chats[-1]["messages"] == [
        {"role": "system", "content": prompts.TIMMY},
        {"role": "user", "content": "What is the budget of Project Nightjar?"},
    ]

    # Once a memory is marked public, it does reach the paid prompt; the rest still does not.
    memory.store_memory(
        content="Project Nightjar is an open bird-watching app.", context_type="fact", source="page", public=True
    )
    assert ask(http, token, "What is Project Nightjar and its budget?").status_code == 200
    system = llm.chats[-1]["messages"][0]["content"]
    assert system.startswith(prompts.TIMMY) and "open bird-watching app" in system
    assert "40000" not in system and "suppliers" not in system and "3 March" not in system


def test_an_unpaid_token_a_forged_one_and_one_for_another_endpoint_are_refused_with_the_reason(http, wallet):
    macaroon, invoice = challenge(http)
    guessed = "00" * 32
    refused = ask(http, f"L402 {macaroon}:{guessed}")
    assert refused.status_code == 401 and "does not match" in refused.json()["detail"]

    preimage = wallet(invoice)
    payment_hash = hashlib.sha256(bytes.fromhex(preimage)).hexdigest()
    forged = Macaroon(location="timmy-time", identifier="forged", key=b"k" * 32)
    forged.add_first_party_caveat(f"payment_hash = {payment_hash}")
    forged.add_first_party_caveat("endpoint = serve/chat")
    forged.add_first_party_caveat(f"expires = {int((timezone.now() + timedelta(hours=1)).timestamp())}")
    response = ask(http, f"L402 {forged.serialize()}:{preimage}")
    assert response.status_code == 401 and response.json()["detail"]

    other = l402.mint(payment_hash=payment_hash, endpoint="serve/other", expires_at=timezone.now() + timedelta(hours=1))
    response = ask(http, f"L402 {other}:{preimage}")
    assert response.status_code == 401 and "endpoint" in response.json()["detail"]

    expired = l402.mint(
        payment_hash=payment_hash, endpoint="serve/chat", expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = ask(http, f"L402 {expired}:{preimage}")
    assert response.status_code == 401 and "expired" in response.json()["detail"]

    tampered = base64.b64decode(macaroon + "==")
    tampered = base64.b64encode(tampered[:-1] + bytes([tampered[-1] ^ 1])).decode()
    assert ask(http, f"L402 {tampered}:{preimage}").status_code == 401
    assert ask(http, f"L402 {macaroon}").status_code == 401  # no preimage


def test_challenges_are_rate_limited_per_client_address(http, settings):
    settings.L402_CHALLENGES_PER_MINUTE = 3
    statuses = [ask(http).status_code for _ in range(5)]
    assert statuses[:3] == [402, 402, 402]
    assert 429 in statuses[3:]
    limited = ask(http)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) <= 60
    assert LedgerEntry.objects.count() <= 4  # a minute boundary may fall inside the test


def test_when_no_model_answers_the_paid_client_is_told_and_the_token_stays_valid(http, wallet):
    macaroon, invoice = challenge(http)
    preimage = wallet(invoice)
    response = ask(http, f"L402 {macaroon}:{preimage}")
    assert response.status_code == 503 and "stays valid" in response.json()["detail"]
    assert Event.objects.filter(event_type="tool.completed", source="agents.serve").exists()


def test_the_dev_pay_endpoint_is_for_staff_and_for_the_dev_node_only(http, settings):
    _, invoice = challenge(http)
    assert http.post("/api/v1/ledger/dev/pay", json={"payment_request": invoice}).status_code == 401
    token = api_token_create(user=StaffFactory(username="ops"), name="ops")[1]
    auth = {"Authorization": f"Bearer {token}"}
    garbage = http.post("/api/v1/ledger/dev/pay", json={"payment_request": "lnbcrt1nope"}, headers=auth)
    assert garbage.status_code == 422 and "BOLT11" in garbage.json()["detail"]
    settings.LIGHTNING_BACKEND = "lnd"
    refused = http.post("/api/v1/ledger/dev/pay", json={"payment_request": invoice}, headers=auth)
    assert refused.status_code == 404 and "LIGHTNING_BACKEND=dev" in refused.json()["detail"]
    assert services.get_balance()["incoming_total_sats"] == 0
