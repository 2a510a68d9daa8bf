"""A self-upgrade from request to merge, in a real browser with the real worker: a change asked for on
/self-modify/queue is drafted by the worker (a local Ollama-protocol server answers with file edits) and tested in
its own worktree of a real repository; a reviewer reads the diff, approves it in the admin; the worker merges it;
the repository's log shows the merge and the event log each step."""

import os
import shlex
import sys
from pathlib import Path

import git
import pytest
from django.contrib.auth.models import Permission
from playwright.sync_api import Page, expect

from apps.upgrades.models import Upgrade
from tests.agents.conftest import provider_at
from tests.e2e.conftest import log_in, reload_until
from tests.factories import StaffFactory
from tests.llm_servers import OllamaServer
from tests.upgrades.test_gitops import make_repo
from tests.upgrades.test_loop import GOOD

pytestmark = pytest.mark.e2e


def test_a_requested_change_is_drafted_approved_in_the_admin_and_merged_by_the_worker(
    page: Page, run_manage, tmp_path: Path, transactional_db
):
    repo = make_repo(tmp_path)
    with git.Repo(repo) as r:
        before = r.head.commit.hexsha
    env = {
        "SELF_MODIFY_REPO": str(repo),
        "SELF_MODIFY_TEST_COMMAND": f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider -p no:django",
        "TIMMY_DATA_DIR": str(tmp_path / "data"),
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    reviewer = StaffFactory(username="reviewer")
    reviewer.user_permissions.add(Permission.objects.get(codename="approve_upgrade"))

    def worker_once() -> str:
        result = run_manage("run_worker", "--once", timeout=120, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    with OllamaServer(reply=GOOD, delay=0) as model:
        provider_at("ollama", model.url, model=model.models[0], read_timeout_seconds=30.0)
        log_in(page, "reviewer", next_path="/self-modify/queue")
        page.get_by_label("What should change?").fill("Add a sub function to pkg/calc.py")
        page.get_by_role("button", name="Queue the request").click()
        expect(page.get_by_text("Add a sub function to pkg/calc.py")).to_be_visible()

        worker_once()  # drafts the request: edits, commit in a worktree, tests
        upgrade = Upgrade.objects.get()
        assert upgrade.tests_passed and upgrade.status == Upgrade.Status.PROPOSED
        proposal = page.locator("#upgrades-waiting, section").get_by_role("link", name="Diff")
        reload_until(page, proposal.first)
        proposal.first.click()
        expect(page.get_by_text("def sub(a, b):").first).to_be_visible()

        page.goto("/admin/upgrades/upgrade/")
        page.get_by_role("checkbox", name="Select this object for an action").first.check()
        page.get_by_role("combobox", name="Action").select_option(label="Approve the selected upgrades")
        page.get_by_role("button", name="Go").click()
        page.get_by_role("button", name="Yes, approve").click()
        expect(page.get_by_text("Approved 1")).to_be_visible()

        output = worker_once()  # applies it
        assert "Handled" in output, output

    upgrade.refresh_from_db()
    assert upgrade.status == Upgrade.Status.APPLIED, upgrade.error_message
    with git.Repo(repo) as r:
        head = r.head.commit
        assert head.hexsha == upgrade.applied_commit and len(head.parents) == 2
        assert head.parents[0].hexsha == before and head.message.startswith(f"Merge upgrade {upgrade.pk}")
    assert "def sub" in (repo / "pkg/calc.py").read_text()

    page.goto("/swarm/events?event_type=upgrade.applied")
    expect(page.locator("tbody tr").filter(has_text="upgrade.applied")).to_have_count(1)
    page.goto("/swarm/events")
    for step in ("upgrade.requested", "upgrade.proposed", "upgrade.approved", "upgrade.applied"):
        expect(page.locator("tbody tr").filter(has_text=step).first).to_be_visible()
