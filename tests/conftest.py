import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connection
from django.test import Client

from apps.core.services import api_token_create
from tests.factories import StaffFactory, UserFactory

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def staff_user(db: None) -> Any:
    return StaffFactory(username="reviewer")


@pytest.fixture
def plain_user(db: None) -> Any:
    return UserFactory(username="plain")


@pytest.fixture
def staff_client(staff_user: Any) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def plain_client(plain_user: Any) -> Client:
    client = Client()
    client.force_login(plain_user)
    return client


@pytest.fixture
def staff_token(staff_user: Any) -> str:
    return api_token_create(user=staff_user)[1]


@pytest.fixture
def api_client(staff_token: str) -> Client:
    """A client that authenticates with a bearer token, as scripts do."""
    return Client(headers={"Authorization": f"Bearer {staff_token}"})


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for a manage.py subprocess that uses this test's database (tests must use transactional_db)."""
    env = dict(os.environ)
    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        env["DATABASE_URL"] = f"sqlite:///{Path(settings_dict['NAME']).resolve()}"
    else:
        user, password = settings_dict["USER"], settings_dict["PASSWORD"]
        host, port = settings_dict["HOST"], settings_dict["PORT"]
        netloc = f"{quote(user, safe='')}:{quote(password or '', safe='')}@{quote(host or '', safe='')}"
        env["DATABASE_URL"] = f"postgres://{netloc}{':' + str(port) if port else ''}/{settings_dict['NAME']}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def run_manage(subprocess_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**subprocess_env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
