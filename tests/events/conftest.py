from typing import Any

import pytest
from django.test import Client

from apps.core.services import api_token_create
from tests.factories import StaffFactory


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # The personas are created with a password per test; PBKDF2 would make that most of the run time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


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
