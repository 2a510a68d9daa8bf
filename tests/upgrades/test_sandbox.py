"""The sandbox of proposal test runs (apps.upgrades.sandbox), with the real bubblewrap and real temporary git
repositories: what a run can write, see and reach, its environment and its limits; and what a proposal records
when no sandbox can be made here, with and without SELF_MODIFY_UNSANDBOXED_TESTS."""

import json
import os
import shlex
import socket
import sys
import time
import uuid
from pathlib import Path

import git
import pytest
from django.test import Client
from django.urls import reverse

from apps.upgrades import loop, sandbox, services
from apps.upgrades.gitops import TestRun, head_sha
from apps.upgrades.models import Upgrade
from tests.upgrades.test_gitops import TEST_CALC, commit_on
from tests.upgrades.test_loop import GOOD

pytestmark = pytest.mark.usefixtures("isolated_git_config")

# Small, so that hitting them is quick; the defaults are far larger.
SMALL = sandbox.Limits(wall_seconds=30, memory_mb=256, processes=32, output_bytes=100_000, file_bytes=1_000_000)
PYTHON = shlex.quote(sys.executable)


def python(code: str) -> str:
    """A test command that runs `code` with the virtualenv's interpreter."""
    return f"{PYTHON} -c {shlex.quote(code)}"


@pytest.fixture
def worktree(repo: Path, settings) -> Path:
    """A proposal's worktree where the loop makes them: in the data dir, beside another proposal's."""
    with git.Repo(repo) as r:
        r.git.worktree("add", "-b", "self-modify/other-1", str(Path(settings.DATA_DIR) / "worktrees" / "other"))
        r.git.worktree("add", "-b", "self-modify/this-2", str(Path(settings.DATA_DIR) / "worktrees" / "this"))
    return Path(settings.DATA_DIR) / "worktrees" / "this"


@pytest.fixture
def reviewer_client(reviewer) -> Client:
    client = Client()
    client.force_login(reviewer)
    return client


def run(code: str, worktree: Path, limits: sandbox.Limits = SMALL) -> TestRun:
    return sandbox.run(python(code), worktree=worktree, env=services.test_environment(), limits=limits)


def test_a_sandbox_can_be_made_here() -> None:
    assert sandbox.unavailable_reason() is None


def test_the_worktree_is_writable_and_tmp_is_private_to_each_run(worktree: Path) -> None:
    marker = f"sandbox-{uuid.uuid4().hex}"
    first = run(
        f"open('written.txt', 'w').write('from inside'); open('/tmp/{marker}', 'w').write('x'); "
        f"import os; print(sorted(os.listdir('/tmp')))",
        worktree,
    )
    assert first.passed, first.output_tail
    assert (worktree / "written.txt").read_text() == "from inside"
    assert not Path("/tmp", marker).exists()  # the host's /tmp never saw it
    second = run(f"import os; assert not os.path.exists('/tmp/{marker}'), 'left by the last run'", worktree)
    assert second.passed, second.output_tail


def test_nothing_outside_the_worktree_is_writable(worktree: Path, repo: Path) -> None:
    # /dev too: a writable /dev would be memory that no limit counts when there is no cgroup.
    read_only = [f"{sys.prefix}/planted.py", "/usr/planted", "/etc/passwd", "/planted", "/root/planted", "/dev/planted"]
    # These are under this machine's /tmp, as tmp_path is: inside, the same paths are in the run's private /tmp.
    outside = repo.parent / "outside.txt"
    outside.write_text("as it was")
    elsewhere = [str(outside), str(worktree.parent / "planted")]
    attempt = run(
        f"for path in {read_only + elsewhere!r}:\n"
        "    try:\n"
        "        open(path, 'a').write('planted')\n"
        "    except OSError as exc:\n"
        "        print('refused', path, type(exc).__name__)\n",
        worktree,
    )
    assert [line.split()[1] for line in attempt.output_tail.splitlines() if line.startswith("refused")] == read_only
    assert outside.read_text() == "as it was"
    assert not Path(sys.prefix, "planted.py").exists() and not (worktree.parent / "planted").exists()


def test_the_data_dir_the_live_tree_and_other_worktrees_are_not_visible(worktree: Path, repo: Path, settings) -> None:
    data = Path(settings.DATA_DIR)
    (data / "timmy.sqlite3").write_text("the database")
    (data / "node.key").write_text("a private key")
    (repo / ".env").write_text("L402_ROOT_KEY=secret\n")
    looked_at = {
        "data dir": str(data),
        "database": str(data / "timmy.sqlite3"),
        "node key": str(data / "node.key"),
        "other worktree": str(data / "worktrees" / "other" / "pkg" / "calc.py"),
        "live tree": str(repo / "pkg" / "calc.py"),
        "live .env": str(repo / ".env"),
        "live .git": str(repo / ".git" / "HEAD"),
        "project": str(Path(settings.BASE_DIR) / "manage.py"),
        "home": "/root/.bash_history",
        "ssl keys": "/etc/ssl/private",
        "shadow": "/etc/shadow",
    }
    seen = run(
        "import os\n"
        f"for what, path in {looked_at!r}.items():\n"
        "    if os.path.isdir(path):\n"
        "        print(what, 'LISTED', os.listdir(path))\n"
        "    elif os.path.exists(path):\n"
        "        print(what, 'READ', open(path).read()[:40])\n"
        "    else:\n"
        "        print(what, 'absent')\n",
        worktree,
    )
    absent = [what for what in looked_at if f"{what} absent" in seen.output_tail]
    # The data dir is there only as the path to the worktree: listed, it shows nothing but `worktrees`.
    assert "data dir LISTED ['worktrees']" in seen.output_tail, seen.output_tail
    assert sorted(absent) == sorted(set(looked_at) - {"data dir"}), seen.output_tail


def test_there_is_no_network_not_even_to_this_machines_loopback(worktree: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        attempt = run(
            "import socket\n"
            f"for host, port in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('10.0.0.1', 80)]:\n"
            "    try:\n"
            "        socket.create_connection((host, port), timeout=2).close()\n"
            "    except OSError as exc:\n"
            "        print('no route', host, type(exc).__name__)\n"
            "    else:\n"
            "        print('CONNECTED', host)\n"
            "print(sorted(name for _, name in socket.if_nameindex()))\n",
            worktree,
        )
        # A connection would be waiting in the backlog, accepted or not.
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert "CONNECTED" not in attempt.output_tail and attempt.output_tail.count("no route") == 3, attempt.output_tail
    assert "['lo']" in attempt.output_tail


def test_the_environment_has_only_the_basics(worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/timmy")
    shown = run("import json, os; print(json.dumps(dict(os.environ)))", worktree)
    env = json.loads(shown.output_tail.strip().splitlines()[-1])
    # PWD is bubblewrap's, set as it changes into the worktree.
    assert sorted(env) == ["HOME", "LANG", "PATH", "PWD", "PYTHONDONTWRITEBYTECODE", "TIMMY_DATA_DIR", "TMPDIR"]
    assert (env["HOME"], env["TMPDIR"], env["TIMMY_DATA_DIR"]) == ("/tmp", "/tmp", "/tmp/timmy-data")
    assert env["PWD"] == str(worktree)


def _processes_named(marker: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_the_wall_time_kills_a_sleeping_run_and_all_its_children(worktree: Path) -> None:
    seconds = f"98{os.getpid() % 10000}.5"  # a sleep no other process on this machine has
    limits = sandbox.Limits(**{**SMALL.__dict__, "wall_seconds": 1.5})
    started = time.monotonic()
    stuck = sandbox.run(
        f"sh -c {shlex.quote(f'sleep {seconds} & sleep {seconds} & (sleep {seconds} &) ; echo started; wait')}",
        worktree=worktree,
        env=services.test_environment(),
        limits=limits,
    )
    assert stuck.timed_out and not stuck.passed
    assert time.monotonic() - started < 1.5 + sandbox.KILL_WAIT_SECONDS
    assert "started" in stuck.output_tail and "wall-time limit of 1.5 s" in stuck.output_tail
    assert _processes_named(f"sleep\0{seconds}") == []


def test_the_output_is_capped_keeping_its_end(worktree: Path) -> None:
    loud = run("import sys\nfor i in range(50_000): print('line', i, 'x' * 40)\nprint('THE END')", worktree)
    assert loud.passed and loud.output_cut
    assert loud.output_tail.rstrip().endswith("THE END")
    assert loud.output_tail.startswith("[sandbox] output cut: ") and "only the last 100,000 kept" in loud.output_tail
    assert "line 0 " not in loud.output_tail


def test_a_file_larger_than_the_limit_cannot_be_written(worktree: Path) -> None:
    big = run("open('big.bin', 'wb').write(b'x' * 5_000_000)", worktree)
    assert not big.passed
    assert (worktree / "big.bin").stat().st_size <= SMALL.file_bytes


def test_several_gigabytes_cannot_be_allocated(worktree: Path) -> None:
    greedy = run(
        "chunks = []\nfor _ in range(4 * 1024 // 64):\n    chunks.append(bytearray(64 * 2**20))\nprint('GOT 4 GB')",
        worktree,
    )
    assert not greedy.passed and "GOT 4 GB" not in greedy.output_tail
    assert greedy.limits_not_enforced == ()
    # As root here the limit is a cgroup's, which kills the process; rlimits would raise MemoryError instead.
    assert greedy.limits_hit or "MemoryError" in greedy.output_tail, greedy.output_tail


FORK_BOMB = """
import os, time
children = 0
for _ in range(2000):  # bounded, should the limit not hold
    try:
        pid = os.fork()
    except OSError as exc:
        print('fork refused after', children, type(exc).__name__)
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children += 1
else:
    print('FORKED', children)
raise SystemExit(1)
"""


def test_a_fork_bomb_stops_at_the_process_limit(worktree: Path) -> None:
    bomb = run(FORK_BOMB, worktree)
    assert "fork refused after" in bomb.output_tail and "FORKED" not in bomb.output_tail, bomb.output_tail
    refused_after = int(bomb.output_tail.split("fork refused after ")[1].split()[0])
    assert refused_after < SMALL.processes
    assert any(hit.startswith("processes:") for hit in bomb.limits_hit)
    assert _processes_named("FORKED") == []  # every child went with the sandbox


def test_without_cgroups_root_gets_a_per_process_memory_limit_and_is_told_processes_are_not_limited(
    worktree: Path, settings
) -> None:
    settings.SANDBOX_CGROUPS = False
    greedy = run("b = bytearray(1024 * 1024 * 1024)\nprint('GOT 1 GB')", worktree)
    assert "MemoryError" in greedy.output_tail and not greedy.passed
    assert "RLIMIT_DATA" in greedy.limited_by
    if os.getuid() == 0:
        assert greedy.limits_not_enforced == ("processes",)


def test_pytest_with_the_virtualenvs_interpreter_passes_inside(worktree: Path, settings) -> None:
    (worktree / "tests" / "test_more.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    ran = sandbox.run(settings.SELF_MODIFY_TEST_COMMAND, worktree=worktree, env=services.test_environment())
    assert ran.passed, ran.output_tail
    assert (ran.passed_count, ran.failed_count, ran.sandbox) == (2, 0, "bubblewrap")


def test_what_a_proposals_tests_leave_in_its_worktree_is_gone_before_git_runs_there_again(
    worktree: Path, settings
) -> None:
    marker = Path(settings.DATA_DIR) / "escaped"
    settings.SELF_MODIFY_TEST_COMMAND = python(
        "import os\n"
        "open('pkg/calc.py', 'a').write('planted = True\\n')\n"
        "open('planted.txt', 'w').write('x')\n"
        "os.makedirs('junk/.git')\n"
        "os.remove('.git')\n"
        "os.makedirs('.git/objects')\n"
        f"open('.git/config', 'w').write('[core]\\n\\tfsmonitor = touch {marker}; false\\n')\n"
    )
    pointer = (worktree / ".git").read_bytes()
    ran = services.run_proposal_tests(worktree)
    assert ran.passed, ran.output_tail
    assert (worktree / ".git").read_bytes() == pointer
    assert not (worktree / "planted.txt").exists() and not (worktree / "junk").exists()
    assert "planted" not in (worktree / "pkg" / "calc.py").read_text()
    with git.Repo(worktree) as tree:
        assert not tree.is_dirty(untracked_files=True)
    assert not marker.exists()


# --- proposals ---


@pytest.fixture
def tests_branch(repo: Path) -> str:
    with git.Repo(repo) as r:
        r.git.branch("more-tests", "main")
    commit_on(repo, "more-tests", {"tests/test_calc.py": TEST_CALC + "\n\ndef test_more():\n    assert True\n"})
    return "more-tests"


@pytest.fixture
def docs_branch(repo: Path) -> str:
    with git.Repo(repo) as r:
        r.git.branch("docs", "main")
    commit_on(repo, "docs", {"README.md": "# tiny, documented\n"})
    return "docs"


def test_a_proposal_records_that_its_tests_ran_in_the_sandbox_and_the_page_shows_it(
    tests_branch: str, reviewer_client: Client
) -> None:
    upgrade = loop.propose_branch(branch=tests_branch, description="One more test")
    results = upgrade.test_results
    assert (results["passed"], results["passed_count"], results["sandbox"]) == (True, 2, "bubblewrap")
    assert results["limits"]["memory_mb"] == sandbox.limits().memory_mb and results["limits_not_enforced"] == []
    page = reviewer_client.get(reverse("upgrades:queue")).content.decode()
    assert "sandboxed</span>" in page and "not sandboxed" not in page
    admin = reviewer_client.get(reverse("admin:upgrades_upgrade_change", args=[upgrade.pk])).content.decode()
    assert 'id="upgrade-sandboxed"' in admin and "Ran in the bubblewrap sandbox" in admin


def test_without_a_sandbox_the_tests_are_not_run_and_the_proposal_says_why(
    docs_branch: str, settings, reviewer_client: Client, reviewer
) -> None:
    settings.SANDBOX_BWRAP = "/nonexistent/bwrap"
    reason = sandbox.unavailable_reason()
    assert reason is not None and "/nonexistent/bwrap" in reason
    with pytest.raises(sandbox.SandboxUnavailable, match="not installed"):
        sandbox.run("true", worktree=Path(settings.DATA_DIR))
    upgrade = loop.propose_branch(branch=docs_branch, description="Document")
    assert upgrade.test_results["not_run"] == reason and not upgrade.tests_passed
    assert upgrade.risk == "low"  # what it changes decides; it cannot be approved anyway
    assert upgrade.error_message.startswith("The tests were not run: no sandbox can be made here")
    with pytest.raises(services.UpgradeTestsFailed):
        services.upgrade_approve(upgrade_id=upgrade.pk, actor=reviewer)
    page = reviewer_client.get(reverse("upgrades:queue")).content.decode()
    assert 'id="sandbox-warning"' in page and "so proposal tests are not run" in page
    assert "not run: no sandbox" in page and "/nonexistent/bwrap" in page
    admin = reviewer_client.get(reverse("admin:upgrades_upgrade_change", args=[upgrade.pk])).content.decode()
    assert "Not run: no sandbox can be made here" in admin


def test_a_draft_without_a_sandbox_is_proposed_untested_after_one_attempt(repo: Path, model, settings) -> None:
    settings.SANDBOX_BWRAP = "/nonexistent/bwrap"
    server = model(GOOD)
    upgrade = loop.draft(instruction="Add sub")
    assert len(server.chats) == 1 and upgrade.attempts == 1  # another attempt would not be tested either
    assert upgrade.test_results["not_run"] and not upgrade.tests_passed
    assert "no sandbox can be made here" in upgrade.error_message and "/nonexistent/bwrap" in upgrade.error_message


def test_the_retest_of_a_merged_result_without_a_sandbox_fails_the_upgrade_and_leaves_the_target(
    approved: Upgrade, repo: Path, settings
) -> None:
    commit_on(repo, "main", {"README.md": "# moved on\n"})
    target = head_sha(repo, "main")
    settings.SANDBOX_BWRAP = "/nonexistent/bwrap"
    claimed = services.upgrade_claim(worker_id="w1")
    assert claimed is not None
    failed = services.upgrade_apply(upgrade=claimed)
    assert failed.status == Upgrade.Status.FAILED and head_sha(repo, "main") == target
    assert "the tests were not run on the merged result: no sandbox can be made here" in failed.error_message
    assert failed.test_results["not_run"] and failed.test_results["on_merged_result"]


def test_with_unsandboxed_tests_allowed_they_run_bare_and_the_proposal_is_high_risk(
    docs_branch: str, settings, reviewer_client: Client
) -> None:
    settings.SANDBOX_BWRAP = "/nonexistent/bwrap"
    settings.SELF_MODIFY_UNSANDBOXED_TESTS = True
    upgrade = loop.propose_branch(branch=docs_branch, description="Document")  # low risk, but for the sandbox
    assert upgrade.tests_passed and upgrade.test_results["sandbox"] == "none"
    assert upgrade.risk == "high"
    page = reviewer_client.get(reverse("upgrades:queue")).content.decode()
    assert 'id="sandbox-warning"' in page and "<strong>without a\n  sandbox</strong>" in page
    assert "⚠ not sandboxed" in page and "upgrade-unsandboxed-warning" in page
    admin = reviewer_client.get(reverse("admin:upgrades_upgrade_change", args=[upgrade.pk])).content.decode()
    assert 'id="upgrade-unsandboxed"' in admin and "This proposal is high risk" in admin
    assert "⚠ not sandboxed" in reviewer_client.get(reverse("admin:upgrades_upgrade_changelist")).content.decode()


def test_the_queue_page_shows_the_test_command_the_limits_and_what_is_visible(
    reviewer_client: Client, settings
) -> None:
    settings.SANDBOX_MEMORY_MB = 1234
    settings.SANDBOX_MAX_PROCESSES = 77
    page = reviewer_client.get(reverse("upgrades:queue")).content.decode()
    section = page.split('id="upgrades-sandbox"', 1)[1]
    assert settings.SELF_MODIFY_TEST_COMMAND.split()[0] in section
    assert "1234 MB" in section and "77 processes" in section and "1.0\xa0MB" in section
    assert f"<code>{sys.prefix}</code>" in section and str(settings.DATA_DIR) in section
    assert "loopback only" in section and "<code>TIMMY_DATA_DIR</code>" in section
    assert 'id="sandbox-warning"' not in page
