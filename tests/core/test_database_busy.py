"""A database held by another process (a backup tool, `sqlite3` in a terminal, a long migration; on PostgreSQL a
lock): requests wait DATABASE_BUSY_SECONDS for it, then answer 503 with Retry-After, never 500; nothing is half
written; daphne keeps answering what does not need the lock; the worker backs off and carries on afterwards.

Everything goes through a real daphne and a real worker on this test's database, held by a real second process:
on SQLite `BEGIN EXCLUSIVE` (or an exclusive locking mode, which stops readers too), on PostgreSQL `LOCK TABLE`.
"""

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection

from apps.agents.models import ChatMessage
from apps.core.services import api_token_create
from apps.ledger.models import LedgerEntry
from apps.memory.models import MemoryEntry
from apps.swarm.models import Task
from tests.e2e.conftest import PASSWORD, SUBPROCESS_SETTINGS, WebServer, Worker
from tests.factories import StaffFactory

pytestmark = pytest.mark.django_db(transaction=True)

BUSY_SECONDS = 1.0
# The holder's own bound: a test that fails never leaves the database held for long.
HOLD_MAX_SECONDS = 60
SERVER_ENV = {
    "DATABASE_BUSY_SECONDS": str(BUSY_SECONDS),
    "EMBEDDING_BACKEND": "hashed",
    "PRELOAD_MODELS": "0",
    # No model answers quickly: the chat's answer is then "no provider", at once.
    "OLLAMA_HOST": "http://127.0.0.1:9",
    "EMBEDDED_SOCKET": "/nonexistent/model-host.sock",
}

SQLITE_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
# Whatever the hold, readers go on in WAL mode: what a migration or a backup takes is the write lock.
conn.execute("BEGIN EXCLUSIVE")
conn.execute("SELECT count(*) FROM django_migrations").fetchone()
print("held", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""
POSTGRES_HOLDER = """
import psycopg, sys
conn = psycopg.connect(sys.argv[1])
mode = "ACCESS EXCLUSIVE" if sys.argv[2] == "everything" else "EXCLUSIVE"
tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
conn.execute("LOCK TABLE " + ", ".join('"%s"' % t for t in tables) + " IN " + mode + " MODE")
print("held", flush=True)
sys.stdin.readline()
conn.rollback()
"""


@contextmanager
def database_held(env: dict[str, str], *, what: str = "writes") -> Iterator[None]:
    """Another process holds this test's database against writers (`writes`), or as a migration holds what it
    changes (`everything`: on PostgreSQL readers wait too; SQLite's WAL lets them read either way)."""
    url = env["DATABASE_URL"]
    if connection.vendor == "sqlite":
        argv = [sys.executable, "-c", SQLITE_HOLDER, url.removeprefix("sqlite:///"), what]
    else:
        argv = [sys.executable, "-c", POSTGRES_HOLDER, url.replace("postgres://", "postgresql://", 1), what]
    holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.strip() == "held", f"the holder did not take the database: {line}{holder.stderr.read()}"  # type: ignore[union-attr]
        yield
    finally:
        if holder.poll() is None:
            try:
                holder.communicate("\n", timeout=10)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()


@pytest.fixture
def server_env(subprocess_env: dict[str, str]) -> dict[str, str]:
    return {**subprocess_env, **SUBPROCESS_SETTINGS, **SERVER_ENV}


@pytest.fixture
def server(server_env: dict[str, str], tmp_path: Path) -> Iterator[WebServer]:
    web = WebServer(env=server_env, log_path=tmp_path / "daphne.log")
    web.start()
    yield web
    web.stop()


class Clients:
    """A staff user's Bearer-token client and signed-in browser-like client on the server."""

    def __init__(self, server: WebServer) -> None:
        staff = StaffFactory()
        _, token = api_token_create(user=staff, name="busy")
        self.api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.browser = httpx.Client(base_url=server.url, timeout=30)
        page = self.browser.get("/accounts/login/")
        signed_in = self.browser.post(
            "/accounts/login/",
            data={"username": staff.username, "password": PASSWORD, "csrfmiddlewaretoken": self.csrf},
            headers={"Referer": f"{server.url}/accounts/login/"},
        )
        assert page.status_code == 200 and signed_in.status_code == 302, signed_in.text[:500]
        # The token's first use is a write (when it was last used): made now, not while the database is held.
        assert self.api.get("/api/v1/agents").status_code == 200

    @property
    def csrf(self) -> str:
        return str(self.browser.cookies["csrftoken"])

    def page_post(self, path: str, data: dict[str, str], *, htmx: bool) -> httpx.Response:
        headers = {"X-CSRFToken": self.csrf, "Referer": f"{self.browser.base_url}{path}"}
        if htmx:
            headers["HX-Request"] = "true"
        return self.browser.post(path, data=data, headers=headers)

    def close(self) -> None:
        self.api.close()
        self.browser.close()


@pytest.fixture
def clients(server: WebServer) -> Iterator[Clients]:
    made = Clients(server)
    yield made
    made.close()


def writes(clients: Clients, tag: str) -> dict[str, Callable[[], httpx.Response]]:
    """One of each kind of write an operator makes, through the API and the pages, tagged to be counted after."""
    return {
        "api task": lambda: clients.api.post("/api/v1/tasks", json={"description": f"Summarise the logs {tag}"}),
        "api memory": lambda: clients.api.post(
            "/api/v1/memory", json={"content": f"The backup disk is blue {tag}", "context_type": "fact"}
        ),
        "api invoice": lambda: clients.api.post("/api/v1/ledger/invoices", json={"amount_sats": 21, "memo": tag}),
        "api chat": lambda: clients.api.post("/api/v1/chat", json={"message": f"Hello {tag}"}),
        "page fact (htmx)": lambda: clients.page_post(
            "/memory/facts", {"content": f"The router is in the attic {tag}"}, htmx=True
        ),
        "page fact": lambda: clients.page_post(
            "/memory/facts", {"content": f"The cat is called Miso {tag}"}, htmx=False
        ),
        "page task": lambda: clients.page_post("/swarm/", {"description": f"Water the plants {tag}"}, htmx=False),
    }


def stored(tag: str) -> dict[str, int]:
    return {
        "api task": Task.objects.filter(description=f"Summarise the logs {tag}").count(),
        "api memory": MemoryEntry.objects.filter(content=f"The backup disk is blue {tag}").count(),
        "api invoice": LedgerEntry.objects.filter(memo=tag).count(),
        "api chat": ChatMessage.objects.filter(content=f"Hello {tag}", role=ChatMessage.Role.USER).count(),
        "page fact (htmx)": MemoryEntry.objects.filter(content=f"The router is in the attic {tag}").count(),
        "page fact": MemoryEntry.objects.filter(content=f"The cat is called Miso {tag}").count(),
        "page task": Task.objects.filter(description=f"Water the plants {tag}").count(),
    }


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_busy(name: str, response: httpx.Response, seconds: float) -> None:
    assert response.status_code == 503, f"{name}: {response.status_code} {response.text[:300]}"
    assert response.headers["Retry-After"] == "1", name
    assert "database is busy" in response.text, f"{name}: {response.text[:300]}"
    # It waited for the lock (a retry within the bound), then gave up, well before a client would.
    assert BUSY_SECONDS * 0.9 <= seconds < BUSY_SECONDS + 5, f"{name} took {seconds:.2f} s"


def test_writes_to_a_held_database_answer_503_with_retry_after_and_are_stored_once_when_sent_again(
    clients: Clients, server_env: dict[str, str], server: WebServer
):
    calls = writes(clients, "held")
    with database_held(server_env), ThreadPoolExecutor(len(calls) + 1) as pool:
        waiting = {name: pool.submit(timed, call) for name, call in calls.items()}
        # Meanwhile daphne answers what needs no write lock: a page and the API, at their usual speed.
        time.sleep(0.2)
        for _ in range(3):
            for path, client in (("/api/v1/tasks", clients.api), ("/swarm/", clients.browser)):
                read, seconds = timed(lambda path=path, client=client: client.get(path))  # type: ignore[misc]
                assert read.status_code == 200, f"{path}: {read.status_code}"
                assert seconds < BUSY_SECONDS / 2, f"{path} waited {seconds:.2f} s while writes were held"
        chat_stream = clients.page_post("/chat/stream", {"message": "Hello while held"}, htmx=False)
        answers = {name: future.result() for name, future in waiting.items()}

    for name, (response, seconds) in answers.items():
        assert_busy(name, response, seconds)
    api = answers["api task"][0].json()
    assert api == {"detail": api["detail"], "retry_after": 1}
    # In place for htmx (the form keeps what was typed), a page of its own otherwise.
    htmx = answers["page fact (htmx)"][0]
    assert htmx.headers["HX-Retarget"] == "#page-alert" and 'role="alert"' in htmx.text
    assert "What you entered is still in the form" in htmx.text
    assert "<h1>The database is busy</h1>" in answers["page fact"][0].text
    # The chat page's stream says it in its final event, as the unstreamed answer would.
    assert chat_stream.status_code == 200
    assert "event: error" in chat_stream.text and '"status": 503' in chat_stream.text, chat_stream.text[:500]
    assert "database is busy" in chat_stream.text
    # Nothing of them was written.
    assert set(stored("held").values()) == {0}
    assert "Internal Server Error" not in server.output() and "Traceback" not in server.output()

    # Sent again once the database is free: each is stored exactly once.
    again = {name: call() for name, call in calls.items()}
    assert again["api task"].status_code == 201
    assert again["api memory"].status_code == 201
    assert again["api invoice"].status_code == 201
    assert again["page fact (htmx)"].status_code == 200
    assert again["page fact"].status_code == 302
    assert again["page task"].status_code == 302
    # No model runs here: the chat says so (not the database), and keeps the message.
    assert again["api chat"].status_code == 503 and "retry_after" not in again["api chat"].json()
    assert stored("held") == dict.fromkeys(calls, 1)


def test_a_write_waits_out_a_short_hold_and_succeeds(clients: Clients, server_env: dict[str, str]):
    with ThreadPoolExecutor(1) as pool:
        with database_held(server_env):
            waiting = pool.submit(timed, writes(clients, "short")["api task"])
            time.sleep(BUSY_SECONDS / 3)
        response, seconds = waiting.result()
    assert response.status_code == 201, response.text
    assert seconds >= BUSY_SECONDS / 3
    assert stored("short")["api task"] == 1


def test_reads_during_a_migration_lock_answer_at_once_on_sqlite_and_503_on_postgresql_never_500(
    clients: Clients, server_env: dict[str, str], server: WebServer
):
    with ThreadPoolExecutor(2) as pool, database_held(server_env, what="everything"):
        api = pool.submit(timed, lambda: clients.api.get("/api/v1/tasks"))
        page = pool.submit(timed, lambda: clients.browser.get("/swarm/"))
        answers = {"api": api.result(), "page": page.result()}
    for name, (response, seconds) in answers.items():
        if connection.vendor == "sqlite":
            assert response.status_code == 200 and seconds < BUSY_SECONDS / 2, f"{name}: {response.status_code}"
        else:
            assert_busy(name, response, seconds)
    assert clients.api.get("/api/v1/tasks").status_code == 200
    assert "Internal Server Error" not in server.output()


def test_the_worker_backs_off_while_the_database_is_held_and_carries_on_after(
    server_env: dict[str, str],
    run_manage: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
):
    env = {**server_env, **SUBPROCESS_SETTINGS, "WORKER_POLL_SECONDS": "0.2", "WORKER_HEARTBEAT_SECONDS": "0.2"}
    worker = Worker(env=env, log_path=tmp_path / "worker.log", run_manage=run_manage, overrides={})
    worker.start()
    try:
        wait_for(lambda: "running" in worker.output(), worker, "the worker to start")
        with database_held(env, what="everything"):
            wait_for(lambda: "the database is busy; waiting" in worker.output(), worker, "the worker to back off")
            assert worker.running
        wait_for(lambda: "the database answers again" in worker.output(), worker, "the worker to carry on")
        assert worker.running
    finally:
        worker.stop()
    output = worker.output()
    assert "Traceback" not in output, output[-3000:]


def wait_for(condition: Callable[[], Any], worker: Worker, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker.running, f"the worker exited while waiting for {what}:\n{worker.output()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{worker.output()[-3000:]}"
        time.sleep(0.1)


def test_the_server_and_the_worker_carry_on_when_the_database_server_drops_their_connections(
    clients: Clients,
    server_env: dict[str, str],
    run_manage: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
):
    """A PostgreSQL restart, as the web server and the worker see it: every connection of theirs is ended by the
    server. (SQLite has no server to restart; there the same requests simply go on.)"""
    worker = Worker(env=server_env, log_path=tmp_path / "worker.log", run_manage=run_manage, overrides={})
    worker.start()
    try:
        wait_for(lambda: "running" in worker.output(), worker, "the worker to start")
        assert clients.api.post("/api/v1/tasks", json={"description": "Before the restart"}).status_code == 201
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                (ended,) = cursor.fetchone()
            assert ended >= 1
        for _ in range(3):
            assert clients.api.get("/api/v1/tasks").status_code == 200
            assert clients.browser.get("/swarm/").status_code == 200
        assert clients.api.post("/api/v1/tasks", json={"description": "After the restart"}).status_code == 201
        # The worker still closes auctions: the task posted after the drop is auctioned and assigned or failed.
        deadline = time.monotonic() + 30
        while Task.objects.get(description="After the restart").status == Task.Status.BIDDING:
            assert worker.running and time.monotonic() < deadline, worker.output()[-3000:]
            time.sleep(0.2)
    finally:
        worker.stop()
    assert "Traceback" not in worker.output(), worker.output()[-3000:]
