"""The data directory holds sessions, private memories, chats, invoice preimages and keys: only its owner may read it.

The directory is kept at 0700, and what lies directly in it loses every group and other bit (0644 becomes 0600,
a folder such as the upgrade worktrees 0700, whose contents the folder's own mode already hides). New database
files are created 0600 by the database engine (timmy_site/db/base.py), and SQLite gives its -wal and -shm files
the database file's mode.
"""

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
# Group and others: no bit of these may be set anywhere checked.
OTHERS = stat.S_IRWXG | stat.S_IRWXO


def _modes(path: Path) -> list[tuple[Path, os.stat_result]]:
    found = []
    for entry in [path, *sorted(path.iterdir())]:
        try:
            found.append((entry, entry.lstat()))
        except FileNotFoundError:  # a -wal or -shm file removed by another process meanwhile
            continue
    return found


def secure(path: Path) -> list[str]:
    """Create `path` if needed and take group and other permissions off it and its entries; return what changed.

    Entries owned by another user are left as they are (chmod would fail); `exposed` reports them.
    """
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    changed = []
    uid = os.geteuid()
    for entry, info in _modes(path):
        if stat.S_ISLNK(info.st_mode) or info.st_uid != uid or not info.st_mode & OTHERS:
            continue
        wanted = DIR_MODE if stat.S_ISDIR(info.st_mode) else stat.S_IMODE(info.st_mode) & ~OTHERS
        try:
            os.chmod(entry, wanted)
        except FileNotFoundError:
            continue
        changed.append(f"{entry} {stat.S_IMODE(info.st_mode):o} -> {wanted:o}")
    return changed


def exposed(path: Path) -> list[str]:
    """The data directory and its entries that group or other users can still read, write or enter."""
    return [
        f"{entry} (mode {stat.S_IMODE(info.st_mode):o})"
        for entry, info in _modes(path)
        if not stat.S_ISLNK(info.st_mode) and info.st_mode & OTHERS
    ]
