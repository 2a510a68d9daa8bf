"""Review in a real browser: a change request that failed stays on /self-modify/queue with its reason and a Retry
that queues it again; an upgrade approved from its diff page goes through the confirmation that says it merges, and
the worker merges it into the real repository."""

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from playwright.sync_api import Page, expect

from apps.upgrades import gitops, services
from apps.upgrades.models import Upgrade, UpgradeRequest
from tests.e2e.conftest import log_in
from tests.factories import StaffFactory
from tests.upgrades.conftest import propose_sub
from tests.upgrades.test_gitops import make_repo

pytestmark = pytest.mark.e2e


def test_a_failed_request_shows_with_its_reason_and_retry_queues_it_again(page: Page, run_manage, tmp_path: Path):
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    StaffFactory(username="operator")
    request = services.upgrade_request_create(instruction="Greet in French", actor=None)
    env = {"SELF_MODIFY_REPO": str(plain), "TIMMY_DATA_DIR": str(tmp_path / "data"), "PRELOAD_MODELS": "0"}
    result = run_manage("run_worker", "--once", timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr

    log_in(page, "operator", next_path="/self-modify/queue")
    failed = page.locator(f"#upgrade-requests-failed #request-{request.pk}")
    expect(failed).to_contain_text("Greet in French")
    expect(failed).to_contain_text("is not a git repository")
    failed.get_by_role("button", name="Retry").click()
    expect(page.get_by_text(f"Change request {request.pk} is queued again")).to_be_visible()
    expect(page.locator(f"#request-{request.pk}")).to_have_attribute("data-status", "queued")
    expect(page.get_by_text("No change request has failed.")).to_be_visible()
    assert UpgradeRequest.objects.get(pk=request.pk).status == UpgradeRequest.Status.QUEUED


def test_approving_from_the_diff_page_confirms_the_merge_and_the_worker_merges_it(
    page: Page, run_manage, tmp_path: Path
):
    repo = make_repo(tmp_path)
    upgrade = propose_sub(
        repo,
        tmp_path,
        {"passed": True, "passed_count": 4, "output_tail": "4 passed in 0.05s", "command": "pytest"},
    )
    reviewer = StaffFactory(username="reviewer")
    reviewer.user_permissions.add(Permission.objects.get(codename="approve_upgrade"))

    log_in(page, "reviewer", next_path=f"/self-modify/queue/{upgrade.pk}/diff")
    expect(page.get_by_text("def sub(a, b):").first).to_be_visible()
    expect(page.locator("#test-output")).to_contain_text("4 passed in 0.05s")
    expect(page.locator("#upgrade-risk")).to_contain_text("Medium risk")
    page.get_by_role("button", name="Approve…").click()
    expect(page.locator("#approve-confirm")).to_contain_text("merges branch self-modify/add-sub-1")
    assert Upgrade.objects.get(pk=upgrade.pk).status == Upgrade.Status.PROPOSED  # nothing until confirmed
    page.get_by_role("button", name="Yes, approve and merge into main").click()
    expect(page.get_by_text(f"Approved upgrade {upgrade.pk}")).to_be_visible()
    expect(page.locator("#upgrade-decision")).to_contain_text("waiting for the worker to apply it")

    env = {"SELF_MODIFY_REPO": str(repo), "TIMMY_DATA_DIR": str(tmp_path / "data"), "GIT_CONFIG_GLOBAL": os.devnull}
    result = run_manage("run_worker", "--once", timeout=120, env={**env, "PRELOAD_MODELS": "0"})
    assert result.returncode == 0, result.stdout + result.stderr
    upgrade.refresh_from_db()
    assert upgrade.status == Upgrade.Status.APPLIED, upgrade.error_message
    assert gitops.head_sha(repo, "main") == upgrade.applied_commit and "def sub" in (repo / "pkg/calc.py").read_text()
    page.reload()
    expect(page.locator("#upgrade-decision")).to_contain_text("Applied")
