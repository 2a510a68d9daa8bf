import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from apps.events.feed import NUDGE_GROUP
from apps.events.services import log_event

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.parametrize("channel_backend", ["redis"], indirect=True),
]


def log_many(count: int) -> None:
    with transaction.atomic():
        for n in range(count):
            log_event("tool.called", source="test", data={"n": n})


async def nudges_received(channel: str, within: float) -> int:
    layer = get_channel_layer()
    received = 0
    try:
        while True:
            await asyncio.wait_for(layer.receive(channel), timeout=within)
            received += 1
    except TimeoutError:
        return received


async def test_a_transaction_that_logs_many_events_nudges_the_followers_once(channel_backend):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(NUDGE_GROUP, channel)

    await database_sync_to_async(log_many)(50)

    assert await nudges_received(channel, within=1.0) == 1


async def test_each_committed_transaction_nudges_and_a_rolled_back_one_does_not(channel_backend):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(NUDGE_GROUP, channel)

    def three_commits_and_a_rollback() -> None:
        for _ in range(3):
            log_many(2)
        with pytest.raises(RuntimeError), transaction.atomic():
            log_event("tool.called", source="test")
            raise RuntimeError("rolled back")

    await database_sync_to_async(three_commits_and_a_rollback)()

    assert await nudges_received(channel, within=1.0) == 3
