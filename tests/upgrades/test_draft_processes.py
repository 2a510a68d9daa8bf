"""Drafts under real `manage.py run_worker` processes (issue 14): a worker killed with -9 mid-draft leaves its
change request to the next worker once the lease runs out; one stopped with SIGTERM hands it back at once. The model
is a local Ollama-protocol server that answers slowly, so the draft is inside a model call when its worker stops."""

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import git
import pytest

from apps.core.models import WorkerHeartbeat
from apps.events.models import Event
from apps.providers.models import Provider
from apps.upgrades import gitops, services
from apps.upgrades.models import Upgrade, UpgradeRequest
from tests.agents.conftest import provider_at
from tests.llm_servers import OllamaServer
from tests.providers.factories import ProviderFactory
from tests.upgrades.test_loop import GOOD, reply

ROOT = Path(__file__).resolve().parents[2]
INSTRUCTION = "Add a sub function to pkg/calc.py"
# Long enough to outlast a worker's start-up: the call is still waiting when the test stops its worker.
SLOW_SECONDS = 20
# Fast, and passes only once `sub` exists: a change without it fails its tests and the loop asks again.
TEST_COMMAND = f"{shlex.quote(sys.executable)} -c 'from pkg.calc import sub; assert sub(5, 3) == 2'"
NO_SUB = reply(("README.md", "# tiny, with sub to come\n"), summary="Not yet")

pytestmark = pytest.mark.usefixtures("isolated_git_config")


def branch_of(request: UpgradeRequest) -> str:
    return f"self-modify/add-a-sub-function-to-pkgcalcpy-{request.pk}"


def the_only_provider(server: OllamaServer) -> None:
    """`server` as the only enabled provider: the defaults a worker adds at start exist already, disabled."""
    # A window of its own, so the router never asks /api/show (which answers slowly too) for one.
    provider_at("ollama", server.url, model=server.models[0], read_timeout_seconds=60.0, context_tokens=8192)
    for name, kind in (("airllm", Provider.Kind.AIRLLM), ("openai", Provider.Kind.OPENAI)):
        ProviderFactory(name=name, kind=kind, enabled=False, base_url="")
    ProviderFactory(name="embedded", kind=Provider.Kind.EMBEDDED, enabled=False, base_url="")


@pytest.fixture
def worker_env(subprocess_env: dict[str, str], repo: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **subprocess_env,
        "SELF_MODIFY_REPO": str(repo),
        "SELF_MODIFY_TARGET_BRANCH": "",
        "SELF_MODIFY_TEST_COMMAND": TEST_COMMAND,
        "SELF_MODIFY_TEST_TIMEOUT_SECONDS": "30",
        "TIMMY_DATA_DIR": str(tmp_path / "data"),
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "WORKER_POLL_SECONDS": "0.2",
    }


class WorkerProcess:
    def __init__(self, worker_id: str, env: dict[str, str], logs: Path) -> None:
        self.worker_id = worker_id
        self.stdout_path = logs / f"{worker_id}.out"
        self.stderr_path = logs / f"{worker_id}.err"
        # Files, not pipes: nothing reads a pipe while the test waits, and a full one would block the worker.
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "run_worker", "--worker-id", worker_id],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def running(self) -> bool:
        """The claim loop has started (the agents joined, the providers exist)."""
        return f"Worker {self.worker_id} running" in self.stdout

    def stop(self, timeout: float) -> float:
        """SIGTERM, then wait for the exit; how long it took."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=timeout)
        return time.monotonic() - sent


@contextmanager
def workers(env: dict[str, str], logs: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts `run_worker` processes; any still running at the end is killed."""
    started: list[WorkerProcess] = []

    def start(worker_id: str, **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess(worker_id, {**env, **extra_env}, logs)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(timeout=10)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, *alive: WorkerProcess) -> None:
    """Until `predicate` holds; fails at once, with its output, if a worker in `alive` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for worker in alive:
            if worker.process.poll() is not None:
                pytest.fail(
                    f"worker {worker.worker_id} exited ({worker.process.returncode}) while waiting for {what}:\n"
                    f"{worker.stdout}\n{worker.stderr}"
                )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def request_now(request: UpgradeRequest) -> UpgradeRequest:
    return UpgradeRequest.objects.get(pk=request.pk)


def finished(request: UpgradeRequest) -> bool:
    return request_now(request).status in (UpgradeRequest.Status.DONE, UpgradeRequest.Status.FAILED)


def events(kind: str) -> list[Event]:
    return list(Event.objects.filter(event_type=kind).order_by("id"))


def worktrees(repo: Path) -> list[str]:
    with git.Repo(repo) as r:
        return [
            line.split(" ", 1)[1]
            for line in r.git.worktree("list", "--porcelain").splitlines()
            if line.startswith("worktree ")
        ]


def test_a_draft_whose_worker_is_killed_is_recovered_after_the_lease_and_drafted_once(
    transactional_db, worker_env, repo, tmp_path
):
    def answer(messages: list[dict[str, Any]]) -> str:
        if len(server.chats) == 1:
            # The first attempt's change fails its tests; the model turns slow for the second attempt, in which
            # the worker is killed with that first attempt's branch and worktree left behind.
            server.mode = "slow"
            return NO_SUB
        return GOOD

    env = {**worker_env, "TASK_LEASE_SECONDS": "3"}
    with OllamaServer(reply=answer, delay=SLOW_SECONDS) as server, workers(env, tmp_path) as start:
        the_only_provider(server)
        request = services.upgrade_request_create(instruction=INSTRUCTION, actor=None)
        first = start("drafter-1")
        wait_until(lambda: server.requests["/api/chat"] == 2, 30, "the second attempt's model call", first)
        first.process.kill()  # SIGKILL: no handing back, the claim stays until its lease runs out
        first.process.wait(timeout=10)

        branch = branch_of(request)
        dead_tip = gitops.head_sha(repo, branch)
        with git.Repo(repo) as r:
            assert "Self-modify attempt 1" in r.commit(dead_tip).message
        live, dead = worktrees(repo)
        leftover = Path(dead)
        assert leftover.is_relative_to(tmp_path / "data" / "worktrees")
        assert (leftover / "README.md").read_text() == "# tiny, with sub to come\n"
        claimed = request_now(request)
        assert (claimed.status, claimed.claimed_by, claimed.attempts) == ("running", "drafter-1", 1)

        server.mode = "normal"
        second = start("drafter-2")
        wait_until(lambda: finished(request), 30, "the request to be drafted again", second)
        assert second.stop(timeout=15) < 10
    assert second.process.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr

    done = request_now(request)
    assert (done.status, done.attempts, done.claimed_by, done.error_message) == ("done", 2, "drafter-2", "")
    [upgrade] = Upgrade.objects.all()
    assert done.upgrade == upgrade
    assert (upgrade.status, upgrade.tests_passed, upgrade.attempts) == (Upgrade.Status.PROPOSED, True, 1)
    assert upgrade.branch == branch and upgrade.head_commit != dead_tip
    # The dead attempt's commit is gone: the branch is the retry's one commit on main, in a worktree of the same name.
    with git.Repo(repo) as r:
        assert r.git.rev_list(f"main..{branch}").split() == [upgrade.head_commit]
    assert worktrees(repo) == [live, upgrade.worktree_path] and Path(upgrade.worktree_path) == leftover
    assert (leftover / "README.md").read_text() == "# tiny\n" and "def sub" in (leftover / "pkg/calc.py").read_text()
    assert server.requests["/api/chat"] == 3  # two by the dead worker, one by the retry

    [released] = events("upgrade.request_released")
    assert released.data["recovered"] is True
    assert (released.data["request_id"], released.data["worker"], released.data["attempts"]) == (
        request.pk,
        "drafter-1",
        1,
    )
    assert len(events("upgrade.proposed")) == 1 and not events("upgrade.request_failed")


def test_a_draft_whose_worker_gets_sigterm_is_handed_back_at_once_to_a_running_worker(
    transactional_db, worker_env, repo, tmp_path
):
    # TASK_LEASE_SECONDS stays at its 300 s: only the hand-back can explain a second worker resuming within seconds.
    env = {**worker_env, "WORKER_GRACE_SECONDS": "1"}
    with OllamaServer(reply=GOOD, mode="slow", delay=SLOW_SECONDS) as server, workers(env, tmp_path) as start:
        the_only_provider(server)
        request = services.upgrade_request_create(instruction=INSTRUCTION, actor=None)
        first = start("drafter-1")
        wait_until(lambda: server.requests["/api/chat"] == 1, 30, "the first worker's model call", first)
        second = start("drafter-2")
        wait_until(second.running, 30, "the second worker to start", first, second)
        running = request_now(request)
        assert (running.status, running.claimed_by, running.attempts) == ("running", "drafter-1", 1)
        assert not server.chats, "the model answered before the worker was stopped"

        server.mode = "normal"  # the first worker's call stays slow; the second worker's is answered at once
        sigterm_at = time.time()
        stopped_in = first.stop(timeout=15)
        wait_until(lambda: finished(request), 20, "the second worker's draft", second)
        assert second.stop(timeout=15) < 10

    assert first.process.returncode == 0, first.stderr
    # The grace second, then the interpreter's own exit (about two seconds on this machine's imports).
    assert stopped_in < 8
    assert "Received SIGTERM: no new work is claimed; 1 running job(s) get 1 s to finish" in first.stdout
    assert first.stdout.rstrip().endswith("Worker stopped.")
    assert second.process.returncode == 0, second.stderr
    assert "Traceback" not in first.stderr + second.stderr
    assert WorkerHeartbeat.objects.get(worker_id="drafter-1").stopped_at is not None

    [released] = events("upgrade.request_released")
    assert released.data["released"] is True and "recovered" not in released.data
    assert (released.data["request_id"], released.data["worker"]) == (request.pk, "drafter-1")
    # Handed back when the grace second ran out, not when the lease would have.
    assert 0.9 <= released.timestamp.timestamp() - sigterm_at < 3

    done = request_now(request)
    assert (done.status, done.attempts, done.claimed_by) == ("done", 1, "drafter-2")
    [upgrade] = Upgrade.objects.all()
    assert done.upgrade == upgrade and (upgrade.status, upgrade.tests_passed) == (Upgrade.Status.PROPOSED, True)
    assert upgrade.branch == branch_of(request) and upgrade.attempts == 1
    assert server.requests["/api/chat"] == 2  # the abandoned call and the second worker's
    assert len(events("upgrade.proposed")) == 1 and not events("upgrade.request_failed")
