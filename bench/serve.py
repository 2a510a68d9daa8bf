"""Benchmark of the web server under an operator's load: requests/s before and after the connection pool (issue 12).

The load (tests/load/serve.py) is the one that deadlocked daphne on SQLite 3.51.1: three threads of API reads back to
back (every fifth request the login page or a static file, with no session), a task posted every second, and one
staff WebSocket client subscribed to /ws/events/ that must receive every posted task's `task.created` event.

Each round starts a fresh daphne on a free loopback port over a fresh temporary data dir (migrated, with one staff
user, an API token and a session), loads it for --seconds, and stops it. Rounds alternate:

- before: one SQLite connection opened and closed per request (SQLITE_POOL_SIZE=0), as the project did up to
  issue 12; or, with --before-tree and --before-python, another checkout of the project with its own virtualenv
  (e.g. the commit before issue 12, with pysqlite3-binary 0.5.4.post2 and its SQLite 3.51.1);
- after: this checkout as it runs by default (idle connections reused, one connection for the feed follower).

A round in which requests time out (--request-timeout) is reported as hung, with the second at which the first
request failed. Figures: requests/s of each side (the median over its rounds), their ratio `after_vs_before`
(target: >= 1.0, no slower), and p50/p99 latencies. Run from the project root: `.venv/bin/python bench/serve.py`
(about 4 minutes with the defaults; --help). The last line of stdout is one JSON object with the figures.
"""

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.load.serve import LoadResult, drive  # noqa: E402

# Run inside the measured checkout: a staff user, an API token and a session for the load, printed as JSON.
SETUP_SCRIPT = """
import json
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from apps.core.services import api_token_create
user = get_user_model().objects.create_user("bench", password="not used", is_staff=True)
session = SessionStore()
session["_auth_user_id"] = str(user.pk)
session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
session["_auth_user_hash"] = user.get_session_auth_hash()
session.create()
print(json.dumps({"token": api_token_create(user=user)[1], "session": session.session_key}))
"""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git_version(tree: Path) -> str:
    described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=tree, capture_output=True, text=True)
    return described.stdout.strip() or "unknown"


def sqlite_version(python: str, tree: Path, env: dict[str, str]) -> str:
    # The module both pysqlite3 and pysqlite3-binary install.
    probe = "import pysqlite3.dbapi2 as d; print(d.sqlite_version)"
    return subprocess.run([python, "-c", probe], cwd=tree, env=env, capture_output=True, text=True).stdout.strip()


class Side:
    def __init__(self, name: str, *, python: str, tree: Path, extra_env: dict[str, str]) -> None:
        self.name, self.python, self.tree, self.extra_env = name, python, tree, extra_env
        self.results: list[LoadResult] = []
        self.hung_at: list[float] = []

    def env(self, data_dir: Path) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "TIMMY_", "SQLITE_"))}
        env.update(
            {
                "TIMMY_DATA_DIR": str(data_dir),
                "DATABASE_URL": "",
                "REDIS_URL": "",
                "DJANGO_DEBUG": "0",
                "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
                "LOG_LEVEL": "WARNING",
                "EMBEDDING_BACKEND": "hashed",
                "AUCTION_SECONDS": "600",
                **self.extra_env,
            }
        )
        return env

    def round(self, seconds: float, request_timeout: float) -> LoadResult:
        data_dir = Path(tempfile.mkdtemp(prefix="timmy-bench-serve-"))
        env = self.env(data_dir)
        daphne = None
        try:
            manage = [self.python, "manage.py"]
            subprocess.run([*manage, "migrate", "--noinput"], cwd=self.tree, env=env, check=True, capture_output=True)
            setup = subprocess.run(
                [*manage, "shell", "-c", SETUP_SCRIPT],
                cwd=self.tree,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            credentials = json.loads(setup.stdout.strip().splitlines()[-1])
            port = free_port()
            log = (data_dir / "daphne.log").open("w")
            daphne = subprocess.Popen(
                [self.python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "timmy_site.asgi:application"],
                cwd=self.tree,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            url = f"http://127.0.0.1:{port}"
            wait_until_answering(url, daphne)
            result = drive(
                url,
                token=credentials["token"],
                session_cookie=f"sessionid={credentials['session']}",
                seconds=seconds,
                request_timeout=request_timeout,
            )
            self.results.append(result)
            if result.first_failure_after is not None:
                self.hung_at.append(result.first_failure_after)
            return result
        finally:
            if daphne is not None:
                stop(daphne)
            shutil.rmtree(data_dir, ignore_errors=True)

    def figures(self) -> dict[str, Any]:
        rates = [r.requests_per_second for r in self.results]
        return {
            "requests_per_second": round(statistics.median(rates), 1),
            "rounds_requests_per_second": [round(rate, 1) for rate in rates],
            "p50_ms": round(statistics.median(r.percentile(0.5) for r in self.results) * 1000, 1),
            "p99_ms": round(statistics.median(r.percentile(0.99) for r in self.results) * 1000, 1),
            "failed_requests": sum(len(r.failures) for r in self.results),
            "hung_rounds": len(self.hung_at),
            "hung_after_seconds": self.hung_at,
            "tasks_missed_by_feed": sum(len(r.missed_by_feed) for r in self.results),
        }


def wait_until_answering(url: str, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daphne exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/accounts/login/", timeout=2):  # noqa: S310 (our own http URL)
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise SystemExit(f"daphne did not answer on {url} within {timeout} s")


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM; a daphne that does not stop in 10 s (a deadlocked one ignores SIGTERM) is killed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40, help="length of one round (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each side, alternating (default 3)")
    parser.add_argument("--request-timeout", type=float, default=10, help="a request slower than this failed")
    parser.add_argument("--before-tree", type=Path, help="another checkout to measure as 'before'")
    parser.add_argument("--before-python", help="the python of --before-tree's virtualenv")
    args = parser.parse_args()
    if bool(args.before_tree) != bool(args.before_python):
        parser.error("--before-tree and --before-python go together")

    if args.before_tree:
        before = Side("before", python=args.before_python, tree=args.before_tree.resolve(), extra_env={})
    else:
        before = Side("before", python=sys.executable, tree=ROOT, extra_env={"SQLITE_POOL_SIZE": "0"})
    after = Side("after", python=sys.executable, tree=ROOT, extra_env={})
    for number in range(args.rounds):
        for side in (before, after):
            result = side.round(args.seconds, args.request_timeout)
            say(f"round {number + 1} {side.name}: {json.dumps(result.summary())}")

    figures_before, figures_after = before.figures(), after.figures()
    ratio = figures_after["requests_per_second"] / max(figures_before["requests_per_second"], 1e-9)
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                "seconds_per_round": args.seconds,
                "rounds": args.rounds,
                "before": {
                    "code": git_version(before.tree),
                    "sqlite": sqlite_version(before.python, before.tree, dict(os.environ)),
                    "pool_size": before.extra_env.get("SQLITE_POOL_SIZE", "default"),
                    **figures_before,
                },
                "after": {
                    "code": git_version(after.tree),
                    "sqlite": sqlite_version(after.python, after.tree, dict(os.environ)),
                    **figures_after,
                },
                "after_vs_before": round(ratio, 2),
                "targets_met": ratio >= 1.0 and figures_after["failed_requests"] == 0,
            }
        )
    )


if __name__ == "__main__":
    main()
