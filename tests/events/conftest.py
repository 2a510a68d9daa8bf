import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client

from apps.core.services import api_token_create
from tests.events.feed_client import FeedClient
from tests.factories import StaffFactory

PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's


@pytest.fixture
def superuser(db: None) -> Any:
    return StaffFactory(username="operator", is_superuser=True)


@pytest.fixture
def superuser_client(superuser: Any) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


@pytest.fixture
def plain_api_client(plain_user: Any) -> Client:
    """A script holding a valid token of a user who is not staff."""
    return Client(headers={"Authorization": f"Bearer {api_token_create(user=plain_user)[1]}"})


def _session_key(user: Any) -> str:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return str(client.cookies[django_settings.SESSION_COOKIE_NAME].value)


@pytest.fixture
def staff_session(staff_user: Any) -> str:
    """The session cookie of a staff member who logged in with a password, as a browser would hold it."""
    return _session_key(staff_user)


@pytest.fixture
def plain_session(plain_user: Any) -> str:
    return _session_key(plain_user)


@pytest.fixture
async def feed_clients() -> AsyncIterator[Callable[..., FeedClient]]:
    """Opens feed clients (from 127.0.0.1 unless told) and disconnects whichever are still open at the end."""
    opened: list[FeedClient] = []

    def open_client(application: Any, *, headers: list[tuple[bytes, bytes]], address: str = "127.0.0.1") -> FeedClient:
        client = FeedClient(application, headers=headers, address=address)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        try:
            await client.close()
        except asyncio.CancelledError:
            # The application was cancelled by a receive that timed out, so the test has failed already. A
            # CancelledError is a BaseException: escaping this teardown, it would skip the teardown of the other
            # fixtures (settings, the database flush) and fail the tests after this one too.
            continue
