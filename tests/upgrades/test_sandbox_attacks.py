"""Proposal code is untrusted (issue 15). Each test here proposes a real branch, with `loop.propose_branch`, whose
test file attacks the machine it runs on: it reads the database and the keys, lists the data directory, writes
outside its worktree, connects to the dashboard and out, forks without bound, allocates 8 GB, sleeps past the time
limit. The attacker knows every path and port: they are written into its file literally.

Every attack must fail inside the sandbox: the proposal is recorded with failing tests and the reason in their
output, the data directory, the keys and the live tree are unchanged byte for byte, and the dashboard (a real
daphne on the same data directory) keeps answering throughout.
"""

import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git
import pytest

from apps.ledger import l402
from apps.ledger.backends.dev import KEY_FILE, node_key
from apps.upgrades import gitops, loop
from apps.upgrades.models import Upgrade
from tests.e2e.conftest import WebServer
from tests.upgrades.test_gitops import commit_on, make_repo
from tests.upgrades.test_loop import reply

pytestmark = pytest.mark.usefixtures("isolated_git_config")

# Just enough to show each limit holds, and to keep the file fast: the defaults are far larger.
LIMITS = {
    "SANDBOX_MEMORY_MB": 512,
    "SANDBOX_MAX_PROCESSES": 64,
    "SANDBOX_OUTPUT_BYTES": 1_000_000,
    "SANDBOX_FILE_BYTES": 10_000_000,
    # A ceiling, not a duration: every attack but the sleeping one ends within a second or two.
    "SELF_MODIFY_TEST_TIMEOUT_SECONDS": 30,
}
TIME_LIMIT_SECONDS = 4
# A marker no other process on the machine has: the child the sleeping attack leaves behind is `sleep 987`.
SURVIVOR = ["sleep", "987"]

# Denied access shows as the file missing (not mounted) or as permission denied, depending on how it is hidden;
# a write, also as a read-only file system (the sandbox's root, where the path would be).
DENIED = r"(?:FileNotFoundError|PermissionError): \[Errno \d+\] [^\n]*"
READ_ONLY = r"OSError: \[Errno 30\] Read-only file system: "

ATTACK_HEADER = """\
import os
import signal
import socket
import subprocess
import time

"""


def child_pytest(target: str) -> str:
    """The test command: pytest on `target` without this project's plugins, one line per failure, so the output's
    tail (what the proposal records) names every reason."""
    plugins = "-p no:cacheprovider -p no:django -p no:asyncio"
    return f"{shlex.quote(sys.executable)} -m pytest -q {plugins} --tb=line -rN {target}"


@dataclass(frozen=True)
class Deployment:
    """A deployment as `make run` lays it out: the live checkout, its data dir with the database, the dev node's key,
    the L402 root key and the Django secret key, LND's macaroon, and another proposal's worktree."""

    root: Path
    live: Path
    data: Path
    database: Path
    node_key: Path
    root_key_file: Path
    secret_key: Path
    macaroon: Path
    other_worktree: Path
    env_root_key: str

    def fingerprint(self, *, skip: Path | None = None) -> dict[str, str]:
        """sha256 of every file (and the target of every link) under the deployment but the live repository's
        .git, which proposing legitimately changes, and `skip`, the proposal's own worktree; plus the live tip."""
        found = {"live main": gitops.head_sha(self.live, "main")}
        for folder, dirs, files in os.walk(self.root):
            here = Path(folder)
            dirs[:] = [d for d in dirs if here / d != self.live / ".git" and here / d != skip]
            for name in [*files, *(d for d in dirs if (here / d).is_symlink())]:
                path = here / name
                key = str(path.relative_to(self.root))
                found[key] = f"-> {os.readlink(path)}" if path.is_symlink() else _sha256(path)
        return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outside_tmp(preferred: Path) -> Path:
    tmp = Path(tempfile.gettempdir()).resolve()
    return Path("/var/tmp") if preferred.resolve().is_relative_to(tmp) else preferred


@pytest.fixture
def deployment(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    # Inside the project's checkout, beside its virtualenv, as a real data dir is, and outside /tmp: the sandbox's
    # private /tmp would hide anything under it without trying (and a write there would land in that private /tmp,
    # harmless, yet not refused). A checkout under /tmp (a CI clone) uses /var/tmp, which the sandbox does not show.
    root = Path(tempfile.mkdtemp(prefix="attacks-", dir=_outside_tmp(Path(settings.DATA_DIR))))
    try:
        live = make_repo(root)
        data = root / "data"
        data.mkdir(mode=0o700)
        database = data / "timmy.sqlite3"
        ledger = sqlite3.connect(database)
        with ledger:
            ledger.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, memo TEXT, amount_sats INTEGER)")
            ledger.execute("INSERT INTO ledger (memo, amount_sats) VALUES ('L402 serve/chat', 100)")
        ledger.close()
        node_key(data)
        root_key_file = data / l402.ROOT_KEY_FILENAME
        root_key_file.write_text(os.urandom(32).hex() + "\n")
        secret_key = data / "secret_key"
        secret_key.write_text(os.urandom(40).hex())
        macaroon = root / "lnd" / "admin.macaroon"
        macaroon.parent.mkdir()
        macaroon.write_bytes(os.urandom(128))
        (root / "lnd" / "tls.cert").write_text("-----BEGIN CERTIFICATE-----\n")
        for path in (database, root_key_file, secret_key, macaroon):
            path.chmod(0o600)
        # The root key may also be configured: in the environment of the worker and in the live tree's .env.
        env_root_key = os.urandom(32).hex()
        (live / ".env").write_text(f"L402_ROOT_KEY={env_root_key}\n")
        monkeypatch.setenv("L402_ROOT_KEY", env_root_key)
        other = gitops.create_worktree(
            live, branch="self-modify/other-1", base="main", worktrees_dir=data / "worktrees"
        )

        settings.DATA_DIR = data
        settings.L402_ROOT_KEY = env_root_key
        settings.LND_MACAROON_PATH = str(macaroon)
        settings.LND_TLS_CERT_PATH = str(root / "lnd" / "tls.cert")
        settings.SELF_MODIFY_REPO = str(live)
        settings.SELF_MODIFY_TARGET_BRANCH = ""
        settings.SELF_MODIFY_ALLOWED_PATHS = []
        # Proposal code never runs outside the sandbox here: without one these tests fail, they do not run it bare.
        settings.SELF_MODIFY_UNSANDBOXED_TESTS = False
        for name, value in LIMITS.items():
            setattr(settings, name, value)
        yield Deployment(
            root=root,
            live=live,
            data=data,
            database=database,
            node_key=data / KEY_FILE,
            root_key_file=root_key_file,
            secret_key=secret_key,
            macaroon=macaroon,
            other_worktree=other,
            env_root_key=env_root_key,
        )
    finally:
        shutil.rmtree(root)


Attack = Callable[..., Upgrade]


@pytest.fixture
def attack(deployment: Deployment, settings: Any) -> Attack:
    """Commit `body` as tests/test_<name>.py on a branch, propose it, and check nothing outside its worktree
    changed; `constants` are written at the top of the file, as an attacker who knows them would."""

    def propose(name: str, body: str, **constants: Any) -> Upgrade:
        header = "".join(f"{key} = {value!r}\n" for key, value in constants.items())
        source = f"{ATTACK_HEADER}{header}\n\n{textwrap.dedent(body).strip()}\n"
        branch = f"attack/{name}"
        with git.Repo(deployment.live) as repo:
            repo.git.branch(branch, "main")
        commit_on(deployment.live, branch, {f"tests/test_{name}.py": source})
        settings.SELF_MODIFY_TEST_COMMAND = child_pytest(f"tests/test_{name}.py")
        before = deployment.fingerprint()
        upgrade = loop.propose_branch(branch=branch, description=f"Attack: {name}")
        assert deployment.fingerprint(skip=Path(upgrade.worktree_path)) == before
        return upgrade

    return propose


def assert_all_failed(upgrade: Upgrade, tests: int, *reasons: str) -> None:
    """Recorded as a proposal whose `tests` tests all failed, each of `reasons` (regexes) in the output's tail."""
    results = upgrade.test_results
    tail = results["output_tail"]
    assert upgrade.status == Upgrade.Status.PROPOSED and results["passed"] is False, tail
    assert (results["passed_count"], results["failed_count"]) == (0, tests), tail
    for reason in reasons:
        assert re.search(reason, tail), f"{reason!r} is not in the output:\n{tail}"


def denied(path: Path) -> str:
    return rf"{DENIED}'{re.escape(str(path))}'"


def not_written(path: Path) -> str:
    return rf"(?:{DENIED}|{READ_ONLY})'{re.escape(str(path))}'"


def not_listed(name: str, folder: Path) -> str:
    # Hidden altogether, or only the bare folders the sandbox needs to reach the proposal's own worktree.
    return rf"(?:AssertionError: assert '{re.escape(name)}' in \[[^\]]*\]|{denied(folder)})"


# --- The dashboard, and addresses outside the sandbox ---


@pytest.fixture
def dashboard(
    deployment: Deployment, transactional_db: None, subprocess_env: dict[str, str], tmp_path: Path
) -> Iterator[WebServer]:
    """daphne as `make run` starts it, on the deployment's data dir (and this test's database)."""
    server = WebServer(env={**subprocess_env, "TIMMY_DATA_DIR": str(deployment.data)}, log_path=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


def answers(server: WebServer) -> int:
    with urllib.request.urlopen(f"{server.url}/accounts/login/", timeout=5) as response:  # noqa: S310 (local http)
        return int(response.status)


@contextmanager
def serving(server: WebServer) -> Iterator[None]:
    """Ask the dashboard for a page every 0.2 s while the body runs (an attack being tested): every answer is a 200."""
    statuses: list[int | str] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                statuses.append(answers(server))
            except OSError as exc:
                statuses.append(repr(exc))
            done.wait(0.2)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=10)
    assert statuses and set(statuses) == {200}, f"{statuses}\n{server.output()[-3000:]}"
    assert answers(server) == 200


def outside_address() -> str:
    """This machine's address on the network (no packet is sent: connecting a UDP socket only picks the route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("203.0.113.1", 9))
        return str(probe.getsockname()[0])


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port open on this machine's outside address: reachable by any process here but a sandboxed one."""
    with socket.create_server((outside_address(), 0)) as server:
        server.setblocking(False)
        yield server


# --- The attacks ---


def test_reading_the_database_fails_and_it_is_unchanged(attack, deployment, db):
    upgrade = attack(
        "read_database",
        """
        def test_read_the_database():
            with open(DATABASE, "rb") as f:
                assert f.read(16) == b"SQLite format 3\\x00"
        """,
        DATABASE=str(deployment.database),
    )
    assert_all_failed(upgrade, 1, denied(deployment.database))


def test_reading_the_lightning_keys_fails(attack, deployment, db):
    upgrade = attack(
        "read_lightning_keys",
        """
        def test_read_the_dev_node_key():
            with open(NODE_KEY) as f:
                assert len(f.read().strip()) == 64

        def test_read_the_lnd_macaroon():
            with open(MACAROON, "rb") as f:
                assert f.read()
        """,
        NODE_KEY=str(deployment.node_key),
        MACAROON=str(deployment.macaroon),
    )
    assert_all_failed(upgrade, 2, denied(deployment.node_key), denied(deployment.macaroon))


def test_the_l402_root_key_and_the_secret_key_are_out_of_reach_wherever_they_are_kept(attack, deployment, db):
    upgrade = attack(
        "read_root_key",
        """
        def test_read_the_root_key_file():
            with open(ROOT_KEY_FILE) as f:
                assert len(f.read().strip()) == 64

        def test_read_the_root_key_from_the_environment():
            assert len(os.environ["L402_ROOT_KEY"]) == 64

        def test_read_the_root_key_from_the_live_trees_env_file():
            with open(LIVE_ENV) as f:
                assert "L402_ROOT_KEY=" in f.read()

        def test_read_the_root_key_from_another_processs_environment():
            found = []
            for pid in os.listdir("/proc"):
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if b"L402_ROOT_KEY=" in f.read():
                            found.append(pid)
                except (OSError, ValueError):
                    continue
            assert found, "no process with L402_ROOT_KEY in its environment"

        def test_read_the_django_secret_key():
            with open(SECRET_KEY) as f:
                assert f.read()
        """,
        ROOT_KEY_FILE=str(deployment.root_key_file),
        LIVE_ENV=str(deployment.live / ".env"),
        SECRET_KEY=str(deployment.secret_key),
    )
    assert_all_failed(
        upgrade,
        5,
        denied(deployment.root_key_file),
        r"KeyError: 'L402_ROOT_KEY'",
        denied(deployment.live / ".env"),
        r"no process with L402_ROOT_KEY in its environment",
        denied(deployment.secret_key),
    )
    assert deployment.env_root_key not in upgrade.test_results["output_tail"]


def test_listing_the_data_directory_the_worktrees_and_the_live_tree_shows_none_of_them(attack, deployment, db):
    upgrade = attack(
        "list_directories",
        """
        def test_list_the_data_directory():
            assert "timmy.sqlite3" in os.listdir(DATA_DIR)

        def test_list_the_other_proposals():
            assert OTHER_WORKTREE in os.listdir(WORKTREES)

        def test_list_the_live_tree():
            assert ".env" in os.listdir(LIVE)
        """,
        DATA_DIR=str(deployment.data),
        WORKTREES=str(deployment.other_worktree.parent),
        OTHER_WORKTREE=deployment.other_worktree.name,
        LIVE=str(deployment.live),
    )
    assert_all_failed(
        upgrade,
        3,
        not_listed("timmy.sqlite3", deployment.data),
        not_listed(deployment.other_worktree.name, deployment.other_worktree.parent),
        not_listed(".env", deployment.live),
    )


def test_writing_to_the_live_tree_the_data_directory_or_another_proposal_fails(attack, deployment, db):
    calc = "def add(a, b):\n    return 0\n"
    upgrade = attack(
        "write_outside",
        """
        def test_overwrite_the_live_code():
            with open(LIVE_CALC, "r+") as f:
                f.write(CALC)

        def test_add_a_module_to_the_live_tree():
            with open(LIVE_NEW, "x") as f:
                f.write("import os\\n")

        def test_delete_the_database():
            os.remove(DATABASE)

        def test_replace_the_node_key():
            with open(NODE_KEY, "r+") as f:
                f.write("0" * 64)

        def test_add_a_file_to_the_data_directory():
            with open(DATA_NEW, "x") as f:
                f.write("owned\\n")

        def test_overwrite_another_proposal():
            with open(OTHER_CALC, "r+") as f:
                f.write(CALC)
        """,
        CALC=calc,
        LIVE_CALC=str(deployment.live / "pkg" / "calc.py"),
        LIVE_NEW=str(deployment.live / "pkg" / "owned.py"),
        DATABASE=str(deployment.database),
        NODE_KEY=str(deployment.node_key),
        DATA_NEW=str(deployment.data / "owned"),
        OTHER_CALC=str(deployment.other_worktree / "pkg" / "calc.py"),
    )
    targets = [
        deployment.live / "pkg" / "calc.py",
        deployment.live / "pkg" / "owned.py",
        deployment.database,
        deployment.node_key,
        deployment.data / "owned",
        deployment.other_worktree / "pkg" / "calc.py",
    ]
    assert_all_failed(upgrade, 6, *map(not_written, targets))
    # The fingerprint covers these too; said outright because they are the point.
    assert not (deployment.live / "pkg" / "owned.py").exists() and not (deployment.data / "owned").exists()


def test_connecting_to_the_dashboard_or_out_fails_and_the_dashboard_keeps_serving(
    attack, deployment, dashboard, listener
):
    host, port = listener.getsockname()[:2]
    with serving(dashboard):
        upgrade = attack(
            "connect",
            """
            def test_connect_to_the_dashboard():
                with socket.create_connection(("127.0.0.1", DASHBOARD_PORT), timeout=5) as s:
                    s.sendall(b"GET /accounts/login/ HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")
                    assert s.recv(12).startswith(b"HTTP/1.")

            def test_connect_to_this_machines_outside_address():
                socket.create_connection((OUTSIDE_HOST, OUTSIDE_PORT), timeout=5).close()

            def test_connect_to_the_internet():
                socket.create_connection(("1.1.1.1", 53), timeout=5).close()
            """,
            DASHBOARD_PORT=dashboard.port,
            OUTSIDE_HOST=host,
            OUTSIDE_PORT=port,
        )
    # Nothing listens on the loopback of the sandbox's own network namespace, and it has no other interface.
    assert_all_failed(
        upgrade,
        3,
        r"ConnectionRefusedError: \[Errno 111\]",
        r"OSError: \[Errno 101\] Network is unreachable",
    )
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected


def test_a_fork_bomb_stops_at_the_process_limit_and_the_dashboard_keeps_serving(attack, deployment, dashboard):
    with serving(dashboard):
        upgrade = attack(
            "fork_bomb",
            """
            def test_fork_without_bound():
                children = []
                try:
                    # Bounded all the same, far above any sane limit: a broken sandbox must not take the machine.
                    for _ in range(FORKS):
                        pid = os.fork()
                        if pid == 0:
                            time.sleep(30)
                            os._exit(0)
                        children.append(pid)
                finally:
                    for pid in children:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
            """,
            FORKS=2000,
        )
    assert_all_failed(upgrade, 1, r"BlockingIOError: \[Errno 11\] Resource temporarily unavailable")


def test_allocating_eight_gigabytes_fails_and_the_dashboard_keeps_serving(attack, deployment, dashboard):
    with serving(dashboard):
        upgrade = attack(
            "allocate",
            """
            def test_allocate_eight_gigabytes():
                block = bytearray(8 * 1024**3)
                # Touch every page: an untouched allocation costs nothing and a memory limit never sees it.
                block[::4096] = b"\\x01" * len(range(0, len(block), 4096))
                assert block[-4096] == 1
            """,
        )
    results = upgrade.test_results
    assert (upgrade.status, results["passed"]) == (Upgrade.Status.PROPOSED, False), results["output_tail"]
    # Under a memory cgroup the kernel kills the process at the limit (pytest has no time to report, the sandbox
    # says why); under RLIMIT_DATA the allocation itself fails.
    assert re.search(
        r"\[sandbox\] limit reached: memory: \d+ process\(es\) killed at the limit of 512 MB|MemoryError",
        results["output_tail"],
    ), results["output_tail"]


def survivors() -> list[int]:
    """Processes on this machine running SURVIVOR."""
    marker = ("\0".join(SURVIVOR) + "\0").encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline == marker:
            found.append(int(pid))
    return found


def test_a_run_past_the_time_limit_is_stopped_with_everything_it_started(attack, deployment, settings, db):
    settings.SELF_MODIFY_TEST_TIMEOUT_SECONDS = TIME_LIMIT_SECONDS
    assert survivors() == []
    # Processes in the sandbox's PID namespace are visible from here: watch for the child to show it was started.
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            seen.update(survivors())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        upgrade = attack(
            "sleep",
            """
            def test_outlive_the_time_limit():
                # Its own session: out of the process group a plain timeout kills.
                subprocess.Popen(SURVIVOR, start_new_session=True)
                time.sleep(600)
            """,
            SURVIVOR=SURVIVOR,
        )
    finally:
        done.set()
        watcher.join(timeout=10)
    assert time.monotonic() - started < TIME_LIMIT_SECONDS + 15
    results = upgrade.test_results
    assert (upgrade.status, results["passed"], results["timed_out"]) == (Upgrade.Status.PROPOSED, False, True)
    assert f"killed after the wall-time limit of {TIME_LIMIT_SECONDS} s" in results["output_tail"]
    assert seen, "the attack never started its child: the time limit is too short for this machine"
    deadline = time.monotonic() + 5
    while (left := survivors()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:  # only ever the attack's own child: stop it before failing
        os.kill(pid, signal.SIGKILL)
    assert left == [], "the attack's child outlived the time limit"


# A git directory of the attacker's making, inside the worktree, whose config has git run a command of its choosing.
PLANT_GIT_DIR = """
def test_leave_a_git_config_for_the_worker():
    here = os.getcwd()
    os.makedirs(".planted/objects")
    os.makedirs(".planted/refs/heads")
    with open(".planted/HEAD", "w") as f:
        f.write("ref: refs/heads/main\\n")
    with open(".planted/config", "w") as f:
        f.write(f'[core]\\n\\tbare = false\\n\\tworktree = {here}\\n\\tfsmonitor = "touch {MARKER}; false"\\n')
    with open(".git", "w") as f:
        f.write(f"gitdir: {here}/.planted\\n")
    raise AssertionError("planted: the next attempt's git command runs it")
"""


def test_what_a_failed_attempt_leaves_in_its_worktree_never_runs_outside_the_sandbox(deployment, model, settings, db):
    # The tests of a draft's first attempt swap the worktree's .git for a git directory of their own; the second
    # attempt commits in that worktree, outside the sandbox.
    marker = deployment.data / "escaped"
    source = f"{ATTACK_HEADER}MARKER = {str(marker)!r}\n{PLANT_GIT_DIR}"
    model(
        reply(("tests/test_escape.py", source), summary="Add a test"),
        reply(("README.md", "# tiny, again\n"), summary="Touch the README"),
    )
    settings.SELF_MODIFY_MAX_ATTEMPTS = 2
    settings.SELF_MODIFY_TEST_COMMAND = child_pytest("tests")
    before = deployment.fingerprint()
    upgrade = loop.draft(instruction="Add a test")
    assert not marker.exists(), "a command planted by the proposal's tests ran outside the sandbox"
    assert deployment.fingerprint(skip=Path(upgrade.worktree_path)) == before
    assert upgrade.tests_passed is False


PLANT_FILES = """
def test_leave_files_for_the_next_commit():
    os.symlink(DATABASE, "ledger.sqlite3")
    with open("tool", "w") as f:
        f.write("#!/bin/sh\\n")
    os.chmod("tool", 0o755)
    with open("blob.bin", "wb") as f:
        f.write(bytes(range(256)))
    raise AssertionError("planted: the next attempt commits them")
"""


def test_files_a_failed_attempts_tests_leave_behind_are_never_proposed(deployment, model, settings, db):
    # Validation refuses symlinks, executables and binaries in the model's edits; files the tests of an earlier
    # attempt wrote into the worktree must not slip into the next attempt's commit unvalidated.
    source = f"{ATTACK_HEADER}DATABASE = {str(deployment.database)!r}\n{PLANT_FILES}"
    model(
        reply(("tests/test_plant.py", source), summary="Add a test"),
        reply(("README.md", "# tiny, again\n"), summary="Touch the README"),
    )
    settings.SELF_MODIFY_MAX_ATTEMPTS = 2
    settings.SELF_MODIFY_TEST_COMMAND = child_pytest("tests")
    upgrade = loop.draft(instruction="Add a test")
    assert sorted(upgrade.files_changed) == ["README.md", "tests/test_plant.py"], upgrade.diff_preview
