"""What escapes the repository is refused before it is proposed: branches with symbolic links, submodules, binary or
oversize files or new executables, through the command, the API and the queue page, each saying which file and why;
and a model's edit onto a symbolic link. Real repositories in a temp dir, a real child pytest for what is proposed."""

import os
import re
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import git
import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from apps.core.services import api_token_create
from apps.upgrades import loop, worker
from apps.upgrades.gitops import EditRejected, FileEdit, create_worktree, head_sha, write_edits
from apps.upgrades.models import Upgrade, UpgradeRequest
from tests.upgrades.test_gitops import CALC, IDENTITY, branches, worktree_paths
from tests.upgrades.test_loop import SUB, TEST_SUB, reply

pytestmark = pytest.mark.usefixtures("isolated_git_config")

API = "/api/v1/upgrades/branch"
QUEUE = reverse("upgrades:queue")
PROPOSE = reverse("upgrades:propose_branch")


@dataclass(frozen=True)
class Branch:
    """What a branch commits on top of main: files written, symbolic links, modes, entries put in the index."""

    files: dict[str, str | bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    executable: tuple[str, ...] = ()
    gitlinks: tuple[str, ...] = ()


def make_branch(repo: Path, name: str, spec: Branch) -> str:
    scratch = repo.parent / f"scratch-{name}"
    with git.Repo(repo) as r:
        r.git.worktree("add", "-b", name, str(scratch), "main")
    for path, content in spec.files.items():
        (scratch / path).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (scratch / path).write_bytes(content)
        else:
            (scratch / path).write_text(content)
    for path, to in spec.links.items():
        (scratch / path).parent.mkdir(parents=True, exist_ok=True)
        (scratch / path).symlink_to(to)
    for path in spec.executable:
        (scratch / path).chmod(0o755)
    with git.Repo(scratch) as tree:
        tree.git.add("--all")
        for path in spec.gitlinks:
            # A submodule as git stores it: a tree entry of mode 160000 naming a commit (here main's own head).
            tree.git.update_index("--add", "--cacheinfo", f"160000,{head_sha(repo, 'main')},{path}")
        tree.git.commit("-m", f"branch {name}", env=IDENTITY)
    with git.Repo(repo) as r:
        r.git.worktree("remove", "--force", str(scratch))
    return head_sha(repo, name)


@dataclass(frozen=True)
class Escape:
    branch: Branch
    reasons: tuple[str, ...]  # regular expressions the refusal must match, each naming a path
    max_file_bytes: int | None = None


ESCAPES = {
    "symlink-to-etc-passwd": Escape(
        Branch(links={"pkg/passwd": "/etc/passwd"}),
        (r"pkg/passwd: is a symbolic link to '/etc/passwd' \(outside the repository\): symbolic links are refused",),
    ),
    "relative-symlink-out-of-the-repo": Escape(
        Branch(links={"pkg/up": "../../x"}),
        (r"pkg/up: is a symbolic link to '\.\./\.\./x' \(outside the repository\)",),
    ),
    "submodule": Escape(
        Branch(
            files={".gitmodules": '[submodule "sub"]\n\tpath = lib/sub\n\turl = /tmp/elsewhere\n'},
            gitlinks=("lib/sub",),
        ),
        (
            r"\.gitmodules: submodules and \.gitmodules are refused",
            r"lib/sub: is a submodule \(commit [0-9a-f]{12}\): submodules and \.gitmodules are refused",
        ),
    ),
    "binary-file": Escape(
        Branch(files={"docs/logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"}),
        (r"docs/logo\.png: is a binary file: proposals may only change text files",),
    ),
    "file-over-the-size-limit": Escape(
        Branch(files={"pkg/big.py": "x = 1\n" * 400}),
        (r"pkg/big\.py: is 2,400 bytes, over the limit of 1,000 bytes \(SELF_MODIFY_MAX_FILE_BYTES\)",),
        max_file_bytes=1000,
    ),
    "made-executable": Escape(
        Branch(executable=("pkg/calc.py",)),
        (
            r"pkg/calc\.py: becomes executable \(100644 → 100755\) outside the paths where executables are allowed "
            r"\(SELF_MODIFY_EXECUTABLE_PATHS: none\)",
        ),
    ),
    "new-executable": Escape(
        Branch(files={"tools/run.sh": "#!/bin/sh\necho hi\n"}, executable=("tools/run.sh",)),
        (r"tools/run\.sh: is a new executable file \(mode 100755\) outside the paths where executables are allowed",),
    ),
}


@pytest.fixture(params=list(ESCAPES), ids=list(ESCAPES))
def escape(request, repo: Path, settings) -> Escape:
    """Branch `escape` of the self-modify repository, which changes something a proposal may not."""
    case = ESCAPES[request.param]
    if case.max_file_bytes is not None:
        settings.SELF_MODIFY_MAX_FILE_BYTES = case.max_file_bytes
    make_branch(repo, "escape", case.branch)
    return case


def assert_says_why(message: str, case: Escape) -> None:
    assert message.startswith("escape cannot be proposed: "), message
    for reason in case.reasons:
        assert re.search(reason, message), f"{reason!r} not in {message!r}"


def assert_nothing_proposed(repo: Path, tmp_path: Path) -> None:
    assert not Upgrade.objects.exists() and not UpgradeRequest.objects.exists()
    assert set(branches(repo)) == {"main", "escape"}
    assert worktree_paths(repo) == [str(repo)]
    worktrees = tmp_path / "data" / "worktrees"
    assert not worktrees.exists() or not any(worktrees.iterdir())


def api_for(user) -> Client:
    _, raw = api_token_create(user=user, name="test")
    return Client(headers={"authorization": f"Bearer {raw}"})


def test_the_command_refuses_a_branch_that_escapes_saying_which_file_and_why(escape, repo, tmp_path, db):
    for queued in ([], ["--queue"]):
        with pytest.raises(CommandError) as excinfo:
            call_command("self_modify", "--branch", "escape", *queued, "Sneak it in", stdout=StringIO())
        assert_says_why(str(excinfo.value), escape)
    assert_nothing_proposed(repo, tmp_path)


def test_the_command_run_as_a_process_exits_non_zero_with_the_reason(repo, tmp_path, run_manage, transactional_db):
    make_branch(repo, "escape", ESCAPES["symlink-to-etc-passwd"].branch)
    env = {
        "SELF_MODIFY_REPO": str(repo),
        "SELF_MODIFY_TARGET_BRANCH": "",
        "TIMMY_DATA_DIR": str(tmp_path / "data"),
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    result = run_manage("self_modify", "--branch", "escape", "Read the passwords", env=env)
    assert result.returncode != 0
    assert "pkg/passwd: is a symbolic link to '/etc/passwd' (outside the repository)" in result.stderr
    assert "Traceback" not in result.stderr
    assert set(branches(repo)) == {"main", "escape"} and worktree_paths(repo) == [str(repo)]


def test_the_api_refuses_a_branch_that_escapes_with_422_and_the_reason(escape, repo, tmp_path, staff_user):
    response = api_for(staff_user).post(
        API, {"branch": "escape", "description": "Sneak it in"}, content_type="application/json"
    )
    assert response.status_code == 422
    assert_says_why(response.json()["detail"], escape)
    assert_nothing_proposed(repo, tmp_path)


def test_the_queue_page_refuses_a_branch_that_escapes_on_its_form(escape, repo, tmp_path, staff_client):
    response = staff_client.post(PROPOSE, {"branch": "escape", "description": "Sneak it in"})
    assert response.status_code == 422
    errors = re.search(
        r'<ul class="errorlist" role="alert" id="branch-errors"><li>(.*?)</li>', response.content.decode()
    )
    assert errors is not None
    assert_says_why(errors.group(1).replace("&#x27;", "'").replace("&gt;", ">"), escape)
    assert 'value="escape"' in response.content.decode()  # the form keeps what was typed
    assert_nothing_proposed(repo, tmp_path)


def test_an_executable_in_the_allowed_paths_and_a_text_change_are_proposed_with_their_modes_shown(
    repo, settings, staff_client, admin_client
):
    settings.SELF_MODIFY_EXECUTABLE_PATHS = ["scripts/", "README.md"]
    make_branch(
        repo,
        "tools",
        Branch(
            files={"scripts/run.sh": "#!/bin/sh\necho hi\n", "pkg/calc.py": SUB, "tests/test_calc.py": TEST_SUB},
            executable=("scripts/run.sh", "README.md"),
        ),
    )
    call_command("self_modify", "--branch", "tools", "Add a script and sub", stdout=StringIO())
    upgrade = Upgrade.objects.get()
    assert upgrade.tests_passed and upgrade.risk == "high"  # it changes a test file
    assert upgrade.files_changed == ["README.md", "pkg/calc.py", "scripts/run.sh", "tests/test_calc.py"]
    assert "old mode 100644\nnew mode 100755" in upgrade.diff and "new file mode 100755" in upgrade.diff

    page = staff_client.get(reverse("upgrades:diff", args=[upgrade.pk])).content.decode()
    assert "mode 100644 → 100755 (executable)" in page  # README.md made executable
    assert "new file, mode 100755 (executable)" in page  # scripts/run.sh
    assert "old mode 100644" in page and "new mode 100755" in page  # git's own lines stay in the diff
    admin = admin_client.get(reverse("admin:upgrades_upgrade_change", args=[upgrade.pk])).content.decode()
    assert "mode 100644 → 100755 (executable)" in admin and "new file, mode 100755 (executable)" in admin


def test_a_plain_branch_queued_through_the_api_is_tested_and_proposed_by_the_worker(repo, staff_user):
    tip = make_branch(repo, "feature", Branch(files={"pkg/calc.py": SUB, "tests/test_calc.py": TEST_SUB}))
    client = api_for(staff_user)
    response = client.post(API, {"branch": "feature", "description": "Add sub"}, content_type="application/json")
    assert response.status_code == 202
    body = response.json()
    assert (body["status"], body["branch"], body["commit"], body["upgrade_id"]) == ("queued", "feature", tip, None)
    assert not Upgrade.objects.exists()  # the request only checks; the worker tests

    assert worker.run_upgrade_requests(None) == 1  # type: ignore[arg-type]
    upgrade = Upgrade.objects.get()
    assert (upgrade.description, upgrade.head_commit, upgrade.tests_passed) == ("Add sub", tip, True)
    assert upgrade.branch == f"self-modify/branch-feature-r{body['id']}"
    followed = client.get(f"/api/v1/upgrades/requests/{body['id']}").json()
    assert (followed["status"], followed["upgrade_id"]) == ("done", upgrade.pk)


def test_the_worker_proposes_the_commit_that_was_checked_not_what_the_branch_moved_to(repo, staff_client):
    checked = make_branch(repo, "feature", Branch(files={"pkg/calc.py": SUB, "tests/test_calc.py": TEST_SUB}))
    response = staff_client.post(PROPOSE, {"branch": "feature", "description": "Add sub"})
    assert response.status_code == 302
    assert f"Queued feature at {checked[:12]}" in staff_client.get(QUEUE).content.decode()
    # After the check, the branch gains a symbolic link out of the repository.
    with git.Repo(repo) as r:
        r.git.worktree("add", str(repo.parent / "later"), "feature")
    (repo.parent / "later" / "pkg" / "passwd").symlink_to("/etc/passwd")
    with git.Repo(repo.parent / "later") as tree:
        tree.git.add("--all")
        tree.git.commit("-m", "later", env=IDENTITY)

    assert worker.run_upgrade_requests(None) == 1  # type: ignore[arg-type]
    upgrade = Upgrade.objects.get()
    assert upgrade.head_commit == checked and "pkg/passwd" not in upgrade.files_changed


def test_a_branch_the_workers_check_refuses_shows_as_failed_with_the_reason(repo, staff_client, staff_user, settings):
    make_branch(repo, "feature", Branch(files={"pkg/big.py": "x = 1\n" * 400}))
    assert staff_client.post(PROPOSE, {"branch": "feature", "description": "Big"}).status_code == 302
    settings.SELF_MODIFY_MAX_FILE_BYTES = 1000  # the limit is lowered before the worker gets to it

    assert worker.run_upgrade_requests(None) == 1  # type: ignore[arg-type]
    request = UpgradeRequest.objects.get()
    assert request.status == UpgradeRequest.Status.FAILED and not Upgrade.objects.exists()
    reason = "feature cannot be proposed: pkg/big.py: is 2,400 bytes, over the limit of 1,000 bytes"
    assert reason in request.error_message
    assert reason in staff_client.get(QUEUE).content.decode()
    assert reason in api_for(staff_user).get(f"/api/v1/upgrades/requests/{request.pk}").json()["error_message"]
    assert set(branches(repo)) == {"main", "feature"} and worktree_paths(repo) == [str(repo)]


def test_the_api_refuses_a_missing_or_empty_branch_and_needs_staff(repo, staff_user, plain_user):
    client = api_for(staff_user)
    missing = client.post(API, {"branch": "nope", "description": "x"}, content_type="application/json")
    assert missing.status_code == 422 and "No branch 'nope'" in missing.json()["detail"]
    with git.Repo(repo) as r:
        r.git.branch("same", "main")
    same = client.post(API, {"branch": "same", "description": "x"}, content_type="application/json")
    assert same.status_code == 422 and "same has no changes against main" in same.json()["detail"]
    blank = client.post(API, {"branch": "", "description": "x"}, content_type="application/json")
    assert blank.status_code == 422
    plain = api_for(plain_user).post(API, {"branch": "same", "description": "x"}, content_type="application/json")
    assert plain.status_code == 403
    assert not UpgradeRequest.objects.exists()


def test_the_schema_documents_the_branch_endpoint_and_its_refusal(api_client):
    schema = api_client.get("/api/v1/openapi.json").json()
    operation = schema["paths"][API]["post"]
    assert set(operation["responses"]) >= {"202", "422"}
    assert "symbolic link" in operation["description"] and "SELF_MODIFY_EXECUTABLE_PATHS" in operation["description"]


# The model's edits


@pytest.mark.parametrize(
    ("path", "content", "reason"),
    [
        ("vendor/evil.py", "x = 1\n", "vendor/evil.py: vendor is a symbolic link in"),
        ("vendor", "x = 1\n", "vendor: vendor is a symbolic link in"),
        (".gitmodules", '[submodule "x"]\n\tpath = x\n\turl = /tmp/x\n', ".gitmodules: submodules and .gitmodules"),
        ("pkg/big.py", "x = 1\n" * 400, "pkg/big.py: is 2,400 bytes, over the limit of 1,000 bytes"),
    ],
    ids=["through-a-symlink", "onto-a-symlink", "gitmodules", "over-the-size-limit"],
)
def test_a_model_edit_that_would_escape_is_refused_and_nothing_is_written(
    repo, tmp_path, model, settings, path, content, reason
):
    settings.SELF_MODIFY_MAX_FILE_BYTES = 1000
    model(reply((path, content)))
    with pytest.raises(loop.DraftFailed, match=re.escape(reason)):
        loop.draft(instruction="Add a helper")
    assert not Upgrade.objects.exists()
    assert branches(repo) == {"main": head_sha(repo, "main")} and worktree_paths(repo) == [str(repo)]
    assert list((tmp_path / "outside").iterdir()) == []  # where vendor points
    assert (repo / "pkg/calc.py").read_text() == CALC


def test_an_edit_onto_a_symlink_in_the_worktree_is_not_written_through_it(repo, tmp_path):
    worktree = create_worktree(repo, branch="upgrade/1", base="main", worktrees_dir=tmp_path / "wt")
    (worktree / "pkg/calc.py").unlink()
    (worktree / "pkg/calc.py").symlink_to(tmp_path / "outside" / "target.py")
    with pytest.raises(EditRejected, match=r"^pkg/calc\.py: is a symbolic link in the worktree"):
        write_edits(worktree, [FileEdit("pkg/calc.py", "x = 1\n")])
    assert not (tmp_path / "outside" / "target.py").exists()
