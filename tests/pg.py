"""A private PostgreSQL with pgvector for one test run: `python -m tests.pg run -- python -m pytest ...`.

The `pgserver` package bundles PostgreSQL 16 and pgvector. `run` initialises a cluster in `<tmp>/timmy-test-pg/<pid>/`
(about a second), listening only on a unix socket in that directory, so two runs at once, from one clone or two,
never share a server or a `test_postgres` database. It creates the `vector` extension in the `postgres` database,
which fails at once if pgvector cannot load, but not in `template1`: the test database gets it from the memory
migration, as a production one does. Then it runs the command with DATABASE_URL pointing at the server, stops the
server, deletes the cluster and exits with the command's status. Clusters of runs that were killed are removed
by the next run.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg

with warnings.catch_warnings():
    # platformdirs warns, at import, that XDG_RUNTIME_DIR is unset; pgserver only keeps a lock file there.
    warnings.simplefilter("ignore")
    import pgserver
    from pgserver.utils import PostmasterInfo

ROOT = Path(__file__).resolve().parent.parent
# Not in the data dir: that is private to its owner (0700), and run as root pgserver starts PostgreSQL as a user of
# its own, which must reach the cluster.
CLUSTERS = Path(tempfile.gettempdir()) / "timmy-test-pg"

STOP_SECONDS = 10
# A throwaway cluster: durability buys nothing and costs the suite a flush on every commit.
SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def _remove_abandoned(clusters: Path) -> None:
    """Clusters of runs whose process has gone: stop a server still running there, then delete the files."""
    for pgdata in clusters.iterdir():
        owner = int(pgdata.name) if pgdata.name.isdigit() else None
        if owner is not None and owner != os.getpid() and psutil.pid_exists(owner):
            continue
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None and info.process is not None:
            with suppress(psutil.NoSuchProcess):
                info.process.send_signal(signal.SIGQUIT)  # immediate shutdown
                info.process.wait(STOP_SECONDS)
        shutil.rmtree(pgdata)


def database_url(socket_dir: Path, name: str = "postgres") -> str:
    return f"postgres://postgres:@{quote(str(socket_dir), safe='')}/{name}"


@contextmanager
def postgres(clusters: Path = CLUSTERS) -> Iterator[str]:
    """A fresh server for the duration of the block; yields its DATABASE_URL."""
    clusters.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(clusters)
    server = pgserver.get_server(clusters / str(os.getpid()), cleanup_mode="delete")
    try:
        socket_dir = server.get_postmaster_info().socket_dir
        assert socket_dir is not None, "pgserver listens on a unix socket on this platform"
        with psycopg.connect(host=str(socket_dir), user="postgres", dbname="postgres", autocommit=True) as conn:
            for name, value in SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        yield database_url(socket_dir)
    finally:
        server.cleanup()


def run(command: list[str]) -> int:
    child: subprocess.Popen[bytes] | None = None

    def on_sigterm(signum: int, frame: object) -> None:
        if child is None:
            raise SystemExit(128 + signum)  # still starting: what was started is stopped below, or by the next run
        child.terminate()  # the command stops first; then the server is stopped as usual

    signal.signal(signal.SIGTERM, on_sigterm)
    with postgres() as url:
        child = subprocess.Popen(command, env={**os.environ, "DATABASE_URL": url})
        try:
            returncode = child.wait()
        except KeyboardInterrupt:  # the command got the Ctrl-C too; let it finish stopping
            returncode = child.wait()
    # Killed by a signal: the shell's convention, 128 + its number.
    return 128 - returncode if returncode < 0 else returncode


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pg", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="action", required=True)
    run_parser = commands.add_parser("run", help="run a command against a fresh server")
    run_parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given: python -m tests.pg run -- COMMAND ...")
    return run(command)


if __name__ == "__main__":
    sys.exit(main())
