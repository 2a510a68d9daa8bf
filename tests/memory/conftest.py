from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission

from apps.memory.embeddings import reset_embedder
from tests.factories import StaffFactory


def grant_private_reading(user: Any) -> Any:
    """Give `user` the permission to read other users' private memories and chats, as an admin does on the
    user's page; returns the user fetched again (permissions are cached on the object)."""
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="memory", codename="view_private_memories")
    )
    return type(user).objects.get(pk=user.pk)


@pytest.fixture
def private_reader(db: None) -> Any:
    """A staff user granted the permission to read other users' private memories and chats."""
    return grant_private_reading(StaffFactory(username="auditor"))


@pytest.fixture
def embedder_backend(settings: Any) -> Iterator[Callable[[str], None]]:
    """Switch EMBEDDING_BACKEND within a test; the process's embedder is made again from the settings."""

    def switch(backend: str) -> None:
        settings.EMBEDDING_BACKEND = backend
        reset_embedder()

    yield switch
    reset_embedder()
