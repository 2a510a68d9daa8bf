"""The web server keeps answering for minutes of steady load with a live-feed subscriber (issue 12).

SQLite 3.51.1 deadlocked daphne for good after 72-221 s of this load (API reads in a few threads, one staff tab on
/ws/events/): two threads each held one of the unix VFS's mutexes and waited for the other's, triggered by
connections opening and closing in several threads. Now the engine refuses that release, keeps idle connections
for reuse, and the feed follower holds one connection for its lifetime.
"""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from apps.core.services import api_token_create
from tests.e2e.conftest import WebServer
from tests.factories import StaffFactory
from tests.load.serve import drive

pytestmark = [pytest.mark.soak, pytest.mark.django_db(transaction=True)]

# Several minutes, as the issue asks: the deadlock took up to 221 s to appear. SOAK_SECONDS shortens a local run.
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
MIN_REQUESTS_PER_SECOND = 10


@pytest.fixture
def server(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[WebServer]:
    web = WebServer(env={**subprocess_env, "AUCTION_SECONDS": "600"}, log_path=tmp_path / "daphne.log")
    web.start()
    yield web
    web.stop()


@pytest.fixture
def staff_credentials(transactional_db: None) -> tuple[str, str]:
    staff: Any = StaffFactory(username="soak")
    client = Client()
    client.force_login(staff)
    return api_token_create(user=staff)[1], f"sessionid={client.cookies['sessionid'].value}"


def test_the_server_keeps_answering_minutes_of_api_reads_with_a_feed_subscriber(server, staff_credentials):
    token, session_cookie = staff_credentials

    result = drive(server.url, token=token, session_cookie=session_cookie, seconds=SOAK_SECONDS)

    summary = result.summary()
    print(f"\nsoak against daphne: {summary}")
    assert result.failures == [], f"{summary}\ndaphne's output:\n{server.output()[-3000:]}"
    assert result.requests_per_second >= MIN_REQUESTS_PER_SECOND, summary
    assert result.feed_error == "", summary
    assert len(result.posted) >= SOAK_SECONDS * 0.5, summary
    assert result.missed_by_feed == set(), summary
    # A hung daphne also ignored SIGTERM: this one stops at once.
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    server.proc.wait(timeout=10)
    assert time.monotonic() - started < 10
