"""Set up Django for a benchmark in a temporary data dir of its own, removed at exit; and what benchmarks share.

Import this module before anything from Django or the project: it sets the environment and calls django.setup().
"""

import atexit
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(tempfile.mkdtemp(prefix="timmy-bench-"))
atexit.register(shutil.rmtree, DATA_DIR, ignore_errors=True)
# Turn SIGTERM into SystemExit so the temporary directory is still removed (and atexit handlers run).
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "timmy_site.settings",
        "TIMMY_DATA_DIR": str(DATA_DIR),
        # Set (empty) rather than unset, so that a DATABASE_URL or REDIS_URL in .env cannot point the benchmark at
        # real data or a shared Redis.
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "LOG_LEVEL": "WARNING",
    }
)
sys.path.insert(0, str(ROOT))

import django  # noqa: E402

django.setup()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def code_version() -> str:
    """The commit measured, with "-dirty" when the working tree differs from it."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    described = subprocess.run([git, "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return described.stdout.strip() or "unknown"


def migrate_fresh_database(detail: str = "") -> None:
    """Say where the benchmark runs, refuse any database outside its temporary data dir, and create the tables."""
    from django.core.management import call_command
    from django.db import connection

    say(f"data dir {DATA_DIR} (removed at exit); {detail or connection.vendor}; DEBUG off")
    if not Path(connection.settings_dict["NAME"]).resolve().is_relative_to(DATA_DIR.resolve()):
        raise RuntimeError(f"refusing to run against {connection.settings_dict['NAME']}")
    call_command("migrate", verbosity=0, interactive=False)
