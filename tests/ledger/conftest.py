from collections.abc import Iterator
from typing import Any

import pytest

from apps.ledger.backends import get_backend, reset_backend
from apps.ledger.backends.dev import DevBackend


@pytest.fixture
def dev_node(settings: Any, tmp_path: Any, db: None) -> Iterator[DevBackend]:
    """The embedded dev node, with its key in this test's own data dir."""
    settings.DATA_DIR = tmp_path
    settings.LIGHTNING_BACKEND = "dev"
    reset_backend()
    node = get_backend()
    assert isinstance(node, DevBackend)
    yield node
    reset_backend()
