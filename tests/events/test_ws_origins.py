"""Only the site's own origins open the live feed (issue 16): scheme, host AND port, not the host alone.

Cookies do not isolate ports, so a page on another port of localhost carries the staff session cookie; the origin
check is what keeps it out. The daphne tests drive the real server over real sockets with the websockets client;
the communicator tests go through timmy_site.asgi.application for the cases a browser cannot produce.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from apps.events.services import log_event
from tests.e2e.conftest import WebServer
from tests.events.feed_client import RECEIVE_SECONDS, browser_headers
from timmy_site.asgi import application as production_application

pytestmark = pytest.mark.django_db(transaction=True)

PROXY_ORIGIN = "https://timmy.example.org"


def open_feed(server: WebServer, *, session_key: str, origin: str | None) -> ClientConnection:
    headers = {"Cookie": f"{django_settings.SESSION_COOKIE_NAME}={session_key}"}
    if origin is not None:
        headers["Origin"] = origin
    return connect(f"ws://127.0.0.1:{server.port}/ws/events/", additional_headers=headers, open_timeout=RECEIVE_SECONDS)


def assert_receives_a_new_event(ws: ClientConnection) -> None:
    ws.send(json.dumps({"action": "subscribe", "channel": "events"}))
    assert json.loads(ws.recv(timeout=RECEIVE_SECONDS))["type"] == "subscribed"
    event = log_event("task.created", source="test", data={"n": 1})
    message = json.loads(ws.recv(timeout=RECEIVE_SECONDS))
    assert (message["type"], message["payload"]["id"]) == ("event", event.id)


def handshake_status(server: WebServer, *, session_key: str, origin: str | None) -> int:
    """101 if the feed opened (then closed at once), else the status daphne refused the handshake with."""
    try:
        with open_feed(server, session_key=session_key, origin=origin):
            return 101
    except InvalidStatus as exc:
        return int(exc.response.status_code)


def other_port(port: int) -> int:
    # Not 8000 either: with PORT unset, the default site origins name port 8000.
    return next(p for p in (port + 1, port + 2) if p != 8000)


@pytest.fixture
def daphne(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[WebServer]:
    # PORT unset, as in the other tests: the server is on a free port the settings know nothing of.
    server = WebServer(env={k: v for k, v in subprocess_env.items() if k != "PORT"}, log_path=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def daphne_behind_a_proxy(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[WebServer]:
    server = WebServer(env={**subprocess_env, "SITE_ORIGINS": PROXY_ORIGIN}, log_path=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


def test_a_page_of_the_same_origin_opens_the_feed_on_daphne_and_gets_events(daphne, staff_session):
    with open_feed(daphne, session_key=staff_session, origin=daphne.url) as ws:
        assert_receives_a_new_event(ws)


def test_daphne_refuses_the_handshake_with_403_from_every_origin_but_its_own(daphne, staff_session):
    port = daphne.port
    foreign = [
        "http://localhost:9999",  # the issue: another server on localhost
        f"http://127.0.0.1:{other_port(port)}",
        f"http://localhost:{other_port(port)}",
        f"https://127.0.0.1:{port}",
        f"ws://127.0.0.1:{port}",
        "null",
        f"http://127.0.0.1.evil.example:{port}",
        f"http://localhost.evil:{port}",
        f"http://evil-localhost:{port}",
        "http://127.0.0.1",
        f"http://127.0.0.1:{port}/live",
        None,  # no Origin header at all, which channels' validator refused too
    ]

    statuses = {origin: handshake_status(daphne, session_key=staff_session, origin=origin) for origin in foreign}

    assert statuses == dict.fromkeys(foreign, 403), daphne.output()[-2000:]
    # The same session from the site's own origin still works: it was the origin that was refused.
    assert handshake_status(daphne, session_key=staff_session, origin=daphne.url) == 101


def test_behind_a_proxy_the_configured_site_origin_opens_the_feed(daphne_behind_a_proxy, staff_session):
    with open_feed(daphne_behind_a_proxy, session_key=staff_session, origin=PROXY_ORIGIN) as ws:
        assert_receives_a_new_event(ws)
    assert handshake_status(daphne_behind_a_proxy, session_key=staff_session, origin="http://timmy.example.org") == 403


# Through the production ASGI application, without a server.

HOST = "127.0.0.1:41234"


def headers_for(session_key: str, *, origin: str | None, host: str | None = HOST) -> list[tuple[bytes, bytes]]:
    headers = browser_headers(session_key=session_key, origin=origin)
    if host is not None:
        headers.append((b"host", host.encode()))
    return headers


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:41234",  # another name of the same machine is another origin
        "http://127.0.0.1:41235",
        "https://127.0.0.1:41234",
        "http://127.0.0.1.evil.example:41234",
        "http://LOCALHOST.evil:41234",
        "null",
        "",
        "http://127.0.0.1:41234\t",
        "http://user@127.0.0.1:41234",
    ],
)
async def test_a_staff_session_from_a_foreign_origin_is_refused(staff_session, feed_clients, origin):
    client = feed_clients(production_application, headers=headers_for(staff_session, origin=origin))

    assert not await client.connect()


async def test_the_origin_of_the_host_header_is_accepted_on_any_port(staff_session, feed_clients):
    client = feed_clients(production_application, headers=headers_for(staff_session, origin="http://127.0.0.1:41234"))

    assert await client.connect()


async def test_a_secure_websocket_accepts_the_https_origin_of_its_host_and_not_the_http_one(
    staff_session, feed_clients
):
    secure = feed_clients(production_application, headers=headers_for(staff_session, origin="https://127.0.0.1:41234"))
    secure.communicator.scope["scheme"] = "wss"
    plain = feed_clients(production_application, headers=headers_for(staff_session, origin="http://127.0.0.1:41234"))
    plain.communicator.scope["scheme"] = "wss"

    assert await secure.connect()
    assert not await plain.connect()


async def test_a_host_outside_allowed_hosts_is_refused_even_when_origin_matches_it(staff_session, feed_clients):
    # DNS rebinding: evil.example resolves to 127.0.0.1, its page opens a socket to its own name.
    origin, host = "http://evil.example:41234", "evil.example:41234"
    client = feed_clients(production_application, headers=headers_for(staff_session, origin=origin, host=host))

    assert not await client.connect()


async def test_two_origin_headers_are_refused(staff_session, feed_clients):
    headers = [*headers_for(staff_session, origin="http://127.0.0.1:41234"), (b"origin", b"http://localhost:9999")]
    client = feed_clients(production_application, headers=headers)

    assert not await client.connect()


async def test_a_configured_site_origin_is_accepted_whatever_the_host(settings: Any, staff_session, feed_clients):
    settings.SITE_ORIGINS = [PROXY_ORIGIN]
    proxied = feed_clients(production_application, headers=headers_for(staff_session, origin=PROXY_ORIGIN))
    default = feed_clients(production_application, headers=headers_for(staff_session, origin="http://127.0.0.1:8000"))

    assert await proxied.connect()
    assert not await default.connect()  # the configured list replaces the default one
