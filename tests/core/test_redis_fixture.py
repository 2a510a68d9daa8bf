"""The channel-layer backends the feed tests run on: the in-memory default, and Redis from the `redis_url` fixture."""

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60

PRINT_LAYER = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timmy_site.settings")
import django
django.setup()
from channels.layers import get_channel_layer
layer = get_channel_layer()
from django.conf import settings
print(type(layer).__name__, settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts", [""])[0])
"""

SEND_TO_GROUP = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timmy_site.settings")
import django
django.setup()
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
async_to_sync(get_channel_layer().group_send)(sys.argv[1], {"type": "ping", "text": sys.argv[2]})
"""


def python(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def test_the_channel_layer_follows_the_backend(channel_backend):
    layer = get_channel_layer()
    if channel_backend == "redis":
        assert isinstance(layer, RedisPubSubChannelLayer)
    else:
        assert isinstance(layer, InMemoryChannelLayer)


async def test_group_send_reaches_every_channel_in_the_group(channel_backend):
    layer = get_channel_layer()
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("feed", first)
    await layer.group_add("feed", second)

    await layer.group_send("feed", {"type": "event.new", "id": 7})

    async with asyncio.timeout(5):
        assert await layer.receive(first) == {"type": "event.new", "id": 7}
        assert await layer.receive(second) == {"type": "event.new", "id": 7}


@pytest.mark.parametrize("channel_backend", ["redis"], indirect=True)
@pytest.mark.parametrize("run", ["first", "second"])
def test_each_redis_test_starts_with_an_empty_database(channel_backend, redis_url, run):
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set(f"left-behind-by-{run}", "1")  # the second run must not see the first one's key


@pytest.mark.parametrize("channel_backend", ["redis"], indirect=True)
async def test_a_subprocess_reaches_this_process_through_redis(
    channel_backend, subprocess_env: dict[str, str], redis_url: str
):
    assert subprocess_env["REDIS_URL"] == redis_url
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("feed", channel)

    result = await asyncio.to_thread(python, SEND_TO_GROUP, "feed", "from afar", env=subprocess_env)

    assert result.returncode == 0, result.stderr
    async with asyncio.timeout(5):
        assert await layer.receive(channel) == {"type": "ping", "text": "from afar"}


def test_subprocesses_keep_the_in_memory_layer_without_redis(subprocess_env: dict[str, str]):
    assert not subprocess_env.get("REDIS_URL")
    result = python(PRINT_LAYER, env=subprocess_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["InMemoryChannelLayer"]


def test_settings_use_redis_when_redis_url_is_set(subprocess_env: dict[str, str], redis_url: str):
    result = python(PRINT_LAYER, env={**subprocess_env, "REDIS_URL": redis_url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "RedisPubSubChannelLayer"
    assert redis_url in result.stdout


def test_the_redis_fixture_answers_ping(redis_url: str):
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()
