import os
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission

from apps.upgrades import gitops, services
from apps.upgrades.models import Upgrade
from tests.agents.conftest import provider_at
from tests.factories import StaffFactory
from tests.llm_servers import OllamaServer
from tests.upgrades.test_gitops import CALC, IDENTITY, make_repo, propose

SUB = CALC + "\n\ndef sub(a, b):\n    return a - b\n"


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


@pytest.fixture
def repo(tmp_path: Path, settings) -> Path:
    """make_repo's repository as the self-modify target (test_gitops has its own, without the settings)."""
    path = make_repo(tmp_path)
    settings.SELF_MODIFY_REPO = str(path)
    settings.SELF_MODIFY_TARGET_BRANCH = ""
    settings.SELF_MODIFY_ALLOWED_PATHS = []
    # The child pytest must not load this project's plugins (pytest-django would look for its settings).
    settings.SELF_MODIFY_TEST_COMMAND = f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider -p no:django"
    settings.SELF_MODIFY_TEST_TIMEOUT_SECONDS = 60
    settings.SELF_MODIFY_MAX_ATTEMPTS = 3
    settings.DATA_DIR = tmp_path / "data"
    return path


@pytest.fixture
def model(db) -> Iterator[Callable[..., OllamaServer]]:
    """A local Ollama-protocol server that answers with the given replies in turn (the last one repeats)."""
    servers: list[OllamaServer] = []

    def start(*replies: str) -> OllamaServer:
        answers = list(replies)

        def answer(messages: list[dict]) -> str:
            return answers.pop(0) if len(answers) > 1 else answers[0]

        server = OllamaServer(reply=answer, delay=0)
        server.__enter__()
        servers.append(server)
        provider_at("ollama", server.url, model=server.models[0], read_timeout_seconds=30.0)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def propose_sub(repo: Path, tmp_path: Path, test_results: dict[str, object] | None = None) -> Upgrade:
    """A proposed upgrade that adds `sub` on its own branch and worktree, as the self-modify loop leaves it."""
    worktree = propose(repo, tmp_path, [gitops.FileEdit("pkg/calc.py", SUB)], branch="self-modify/add-sub-1")
    base, head = gitops.head_sha(repo, "main"), gitops.head_sha(repo, "self-modify/add-sub-1")
    summary = gitops.diff_summary(repo, base, head)
    return services.upgrade_propose(
        proposal=services.Proposal(
            description="Add sub",
            instruction="Add sub",
            repo_path=str(repo),
            target_branch="main",
            branch="self-modify/add-sub-1",
            worktree_path=str(worktree),
            base_commit=base,
            head_commit=head,
            files_changed=summary.files_changed,
            diff=summary.diff,
            diff_preview=summary.preview,
            risk="medium",
            test_results=test_results or {"passed": True},
        )
    )


@pytest.fixture
def approved(repo: Path, tmp_path: Path, reviewer) -> Upgrade:
    """An approved upgrade on its own branch and worktree, as the self-modify loop leaves it."""
    upgrade = propose_sub(repo, tmp_path)
    return services.upgrade_approve(upgrade_id=upgrade.pk, actor=reviewer)
