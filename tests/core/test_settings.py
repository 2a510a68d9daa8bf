import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.db import connection

from tests.gated import gated

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60

# Prints what the settings made of the environment, and marks the database it was given.
PROBE = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timmy_site.settings")
import django
django.setup()
from django.conf import settings
from django.db import connection
with connection.cursor() as cursor:
    if len(sys.argv) > 1:
        cursor.execute(f"PRAGMA user_version = {int(sys.argv[1])}")
    cursor.execute("PRAGMA user_version")
    version = cursor.fetchone()[0]
print(settings.SECRET_KEY)
print(settings.DATABASES["default"]["NAME"])
print(version)
"""


def clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh start: no database URL or secret inherited from the test run."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SECRET_KEY")}
    return {**env, "TIMMY_DATA_DIR": str(data_dir), "DJANGO_DEBUG": "1", **extra}


def probe(env: dict[str, str], *args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def test_without_debug_and_without_a_configured_key_a_key_is_generated_into_the_data_dir(tmp_path):
    env = clean_env(tmp_path, DJANGO_DEBUG="0")
    result = manage(env, "check")
    assert result.returncode == 0, result.stderr
    key_file = tmp_path / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert probe(env)[0] == key_file.read_text().strip()


def test_production_starts_with_a_secret_key_from_the_environment(tmp_path):
    env = clean_env(tmp_path, DJANGO_DEBUG="0", DJANGO_SECRET_KEY="s" * 60)
    result = manage(env, "check")
    assert result.returncode == 0, result.stderr
    assert probe(env)[0] == "s" * 60
    assert not (tmp_path / "secret_key").exists()


def test_a_generated_secret_key_is_made_once_and_reused(tmp_path):
    env = clean_env(tmp_path)
    first = probe(env)[0]
    key_file = tmp_path / "secret_key"
    assert len(first) >= 50
    assert key_file.read_text().strip() == first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert probe(env)[0] == first


# Waits for the go on stdin before importing the settings, so that many processes start them at the same instant.
KEY_AT_THE_GATE = """
import os, sys
sys.stdin.readline()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timmy_site.settings")
from django.conf import settings
print(settings.SECRET_KEY)
"""


def test_processes_starting_at_once_in_a_new_data_dir_agree_on_one_secret_key(tmp_path):
    # serve starts the dashboard and the worker together; on a first run both create the key.
    for attempt in range(3):
        env = clean_env(tmp_path / str(attempt))
        with gated([["-c", KEY_AT_THE_GATE]] * 12, env=env) as starters:
            starters.release()
            results = starters.finish(timeout=TIMEOUT)
        for _, stderr, returncode in results:
            assert returncode == 0, stderr
        keys = {stdout.strip() for stdout, _, _ in results}
        assert keys == {(tmp_path / str(attempt) / "secret_key").read_text().strip()}
        assert len(keys.pop()) >= 50
        assert sorted(p.name for p in (tmp_path / str(attempt)).iterdir()) == ["secret_key"]


def test_each_data_dir_has_its_own_secret_key_and_database(tmp_path):
    one, two = clean_env(tmp_path / "one"), clean_env(tmp_path / "two")
    key_one, db_one, _ = probe(one, "11")
    key_two, db_two, version_two = probe(two)
    assert key_one != key_two
    assert Path(db_one) == tmp_path / "one" / "timmy.sqlite3"
    assert Path(db_two) == tmp_path / "two" / "timmy.sqlite3"
    assert version_two == "0"  # the mark made in one is not in two
    assert probe(one)[2] == "11"


def test_a_relative_data_dir_is_under_the_project_wherever_the_process_starts(tmp_path):
    relative = Path("data") / "test" / f"relative-{os.getpid()}"
    env = clean_env(relative, PYTHONPATH=str(ROOT))
    try:
        result = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert result.returncode == 0, result.stderr
        assert Path(result.stdout.splitlines()[1]) == ROOT / relative / "timmy.sqlite3"
        assert not (tmp_path / "data").exists()
    finally:
        shutil.rmtree(ROOT / relative, ignore_errors=True)


LOG_ONE_OF_EACH = """
import logging, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timmy_site.settings")
import django
django.setup()
logging.getLogger("django.request").warning("Not Found: /nowhere")
logging.getLogger("timmy.worker").warning("the database is busy")
"""


def test_in_debug_mode_each_warning_is_logged_once(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", LOG_ONE_OF_EACH],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Not Found: /nowhere") == 1, result.stderr
    assert result.stderr.count("the database is busy") == 1, result.stderr


def test_the_database_has_its_vector_extension(db):
    """sqlite-vec is loaded on every connection by timmy_site.db; pgvector is created by the memory migration."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            assert cursor.fetchone() is not None
            cursor.execute("SELECT '[0, 0, 0]'::vector <-> '[0, 3, 4]'::vector")
        else:
            cursor.execute("SELECT vec_version()")
            assert cursor.fetchone()[0].startswith("v")
            cursor.execute("SELECT vec_distance_l2('[0, 0, 0]', '[0, 3, 4]')")
        assert cursor.fetchone()[0] == 5.0


def test_readers_pass_a_writer_and_a_blocked_writer_waits(db):
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Readers never wait for writers there. A write waits for a row lock up to DATABASE_BUSY_SECONDS (then
            # the request is a 503, apps/core/database.py), and in READ COMMITTED (Django's default) a conditional
            # UPDATE that waited re-checks its WHERE on the committed row, which is what makes the worker's claims
            # exclusive.
            cursor.execute("SELECT setting FROM pg_settings WHERE name = 'lock_timeout'")
            assert int(cursor.fetchone()[0]) == settings.DATABASE_BUSY_SECONDS * 1000
            cursor.execute("SHOW transaction_isolation")
            assert cursor.fetchone()[0] == "read committed"
        else:
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == "wal"
            cursor.execute("PRAGMA busy_timeout")
            assert cursor.fetchone()[0] == settings.DATABASE_BUSY_SECONDS * 1000
