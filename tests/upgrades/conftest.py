import os

import pytest
from django.contrib.auth.models import Permission

from tests.factories import StaffFactory
from tests.upgrades.test_gitops import IDENTITY


@pytest.fixture
def reviewer(db):
    """A staff user who may approve and reject upgrades."""
    user = StaffFactory(username="reviewer")
    user.user_permissions.add(Permission.objects.get(codename="approve_upgrade"))
    return user


@pytest.fixture
def isolated_git_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """No global or system git config, so no identity either: the code under test must pass its own."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in IDENTITY:
        monkeypatch.delenv(name, raising=False)
