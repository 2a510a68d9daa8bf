"""One embedded model for the whole installation: daphne and two workers use the model host's single copy."""

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from apps.core.services import api_token_create
from apps.events.models import Event
from apps.providers.models import Provider
from apps.providers.services import providers_ensure_defaults
from apps.swarm.models import Agent, Task
from tests.e2e.conftest import WebServer, Worker, _subprocess_overrides
from tests.factories import AgentFactory, StaffFactory
from tests.llm_servers import ModelHostProcess

pytestmark = pytest.mark.e2e

WORKERS_START_SECONDS = 30
TASKS_SECONDS = 120


def api(server: WebServer, token: str, path: str, payload: dict[str, Any]) -> Any:
    request = urllib.request.Request(  # noqa: S310 (our own http URL)
        f"{server.url}/api/v1{path}",
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return json.loads(response.read())


def mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_web_server_and_two_workers_share_one_loaded_model(
    e2e_env: dict[str, str],
    model_host_process: ModelHostProcess,
    run_manage: Callable[..., Any],
    tmp_path: Path,
):
    providers_ensure_defaults()
    # An earlier test on a flushed database may have left no persona agents: one that bids on everything.
    if not Agent.objects.filter(bids_on_tasks=True).exists():
        AgentFactory(name="echo", persona="echo", status=Agent.Status.OFFLINE)
    Provider.objects.exclude(name="embedded").update(enabled=False)
    env = {**e2e_env, **model_host_process.env}
    loads_before = (model_host_process.health() or {})["loads"]
    web = WebServer(env=env, log_path=tmp_path / "daphne.log")
    workers = [
        Worker(env=env, log_path=tmp_path / f"worker{i}.log", run_manage=run_manage, overrides=_subprocess_overrides())
        for i in (1, 2)
    ]
    web.start()
    try:
        for worker in workers:
            worker.start()
        # The agents are registered by the workers as they start.
        deadline = time.monotonic() + WORKERS_START_SECONDS
        while not all("job(s) at once." in worker.output() for worker in workers):
            assert time.monotonic() < deadline, "\n".join(w.output() for w in workers)
            time.sleep(0.2)
        _, token = api_token_create(user=StaffFactory())
        reply = api(web, token, "/chat", {"message": "What is the capital of France? Answer in one word."})
        assert reply["provider"] == "embedded" and "paris" in reply["response"].lower()
        # Posted through the API and auctioned to the agents the workers brought online; the workers run them
        # through the model while the web server goes on answering.
        posted = [
            api(web, token, "/tasks", {"description": f"Summarise the history of {topic} in two sentences."})
            for topic in ("the bicycle", "the lighthouse")
        ]
        ids = [task["id"] for task in posted]
        deadline = time.monotonic() + TASKS_SECONDS
        while Task.objects.filter(pk__in=ids, status=Task.Status.COMPLETED).count() < len(ids):
            failed = Task.objects.filter(pk__in=ids, status=Task.Status.FAILED).first()
            assert failed is None, f"task failed: {failed.failure_reason if failed else ''}"
            states = list(Task.objects.filter(pk__in=ids).values_list("status", "result"))
            assert time.monotonic() < deadline, f"{states}\n" + "\n".join(w.output() for w in workers)
            time.sleep(0.5)
        answered_by = {
            e.data.get("provider") for e in Event.objects.filter(event_type="tool.completed", task_id__in=ids)
        }
        assert answered_by == {"embedded"}
        # Neither daphne nor a worker has llama.cpp or the model file in its memory: only the host does.
        for pid in [web.proc.pid, *(w.proc.pid for w in workers)]:  # type: ignore[union-attr]
            maps = mapped_files(pid)
            assert "libllama" not in maps and ".gguf" not in maps
        assert "libllama" in mapped_files(model_host_process.pid)
        health = model_host_process.health()
        assert health is not None and health["loads"] == loads_before
    finally:
        for worker in workers:
            worker.stop()
        web.stop()
