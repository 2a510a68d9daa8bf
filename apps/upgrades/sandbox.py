"""The sandbox every test run of a proposal goes through: bubblewrap, with the worktree as the only writable place
besides a private /tmp, the system and the virtualenv read-only, its own network namespace (loopback only), a
minimal environment, and limits on wall time, memory, processes, output and file size.

Memory and processes are limited by a cgroup of the run's own when one can be made here (cgroup v1, or a v2
subtree with the controllers delegated: as root, usually), otherwise by rlimits: RLIMIT_DATA (per process, not in
total) and RLIMIT_NPROC (which counts all the user's processes and does not apply to root at all). A limit that
cannot be applied is named in the result (`limits_not_enforced`) and the run still happens. RLIMIT_FSIZE and a
zero RLIMIT_CORE always apply.

Whether a sandbox can be made is probed once per process (`unavailable_reason`).
"""

import contextlib
import functools
import json
import logging
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from django.conf import settings

from apps.upgrades import gitops

logger = logging.getLogger("timmy.upgrades")

SANDBOX = "bubblewrap"
UNSANDBOXED = "none"
TMP = "/tmp"  # noqa: S108 - the sandbox's own private tmpfs, not this machine's /tmp
MB = 1024 * 1024
TAIL_CHARS = 4000
KILL_WAIT_SECONDS = 5
PROBE_SECONDS = 30
READ_CHUNK = 65536
# Merged-/usr systems have these as links into /usr; older layouts have them as directories of their own.
TOP_LEVEL_SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What of /etc a test run needs (the dynamic loader, certificates, user and host names, time zone), and no more:
# /etc/ssl/private, /etc/shadow and the rest stay out of sight.
ETC_PATHS = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "passwd", "group", "nsswitch.conf", "hosts",
    "localtime", "timezone", "ssl/certs", "ssl/openssl.cnf", "pki/tls/certs", "pki/ca-trust/extracted",
    "mime.types", "fonts", "chromium", "chromium.d",
)  # fmt: skip
BWRAP_OPTIONS = (
    "--unshare-all",  # user, pid, network (loopback only), ipc, uts, cgroup namespaces
    "--unshare-user",  # required by --disable-userns, and what lets an unprivileged user run bwrap at all
    "--disable-userns",  # no nested user namespaces: less kernel to attack from inside
    "--die-with-parent",
    "--new-session",  # no controlling terminal to push keystrokes into (TIOCSTI)
    "--cap-drop", "ALL",
    "--hostname", "sandbox",
)  # fmt: skip
# Run between Popen and bwrap: joins the run's cgroups and sets its rlimits, then becomes bwrap. A separate
# interpreter rather than preexec_fn, which is unsafe in a process with threads (the worker has several).
WRAPPER = """
import json, os, resource, sys
spec = json.loads(sys.argv[1])
try:
    for procs in spec["cgroups"]:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    for name, value in spec["rlimits"]:
        which = getattr(resource, name)
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    print(f"[sandbox] cannot start: {exc}", flush=True)
    sys.exit(125)
"""


class SandboxUnavailable(Exception):
    """No sandbox can be made here; the message says why."""


@dataclass(frozen=True)
class Limits:
    wall_seconds: float
    memory_mb: int
    processes: int
    output_bytes: int
    file_bytes: int


def limits() -> Limits:
    return Limits(
        wall_seconds=float(settings.SELF_MODIFY_TEST_TIMEOUT_SECONDS),
        memory_mb=settings.SANDBOX_MEMORY_MB,
        processes=settings.SANDBOX_MAX_PROCESSES,
        output_bytes=settings.SANDBOX_OUTPUT_BYTES,
        file_bytes=settings.SANDBOX_FILE_BYTES,
    )


def environment(*, tmp: str = TMP) -> dict[str, str]:
    """The whole environment of a test run: nothing of this process's (database, data dir, secrets) reaches it.
    TIMMY_DATA_DIR points into the run's private /tmp, so this project's own suite can run inside."""
    return {
        "PATH": os.pathsep.join([str(Path(sys.prefix) / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": tmp,
        "TMPDIR": tmp,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TIMMY_DATA_DIR": f"{tmp}/timmy-data",
    }


# --- what the sandbox sees ---


@dataclass(frozen=True)
class Mount:
    kind: Literal["read-only", "read-write", "symlink", "tmpfs", "proc", "dev"]
    path: str
    target: str = ""  # of a symlink
    size: int = 0  # of a tmpfs, bytes


def python_prefixes() -> list[str]:
    """The virtualenv and the interpreter it was made from (sys.base_prefix: /usr/local, /usr, or a pyenv
    directory), as given and resolved, leaving out what /usr already shows."""
    found: list[str] = []
    for prefix in (sys.prefix, sys.base_prefix):
        for path in (os.path.abspath(prefix), os.path.realpath(prefix)):
            if not _is_within(path, "/usr") and path not in found:
                found.append(path)
    return found


def mounts(worktree: Path | None, limits: Limits) -> list[Mount]:
    """What bwrap puts in the sandbox's otherwise empty root, in order: a later mount may sit inside an earlier one
    (the worktree inside /tmp, as in tests). Everything else (the data dir, other worktrees, the live tree but its
    virtualenv, /root, /home) is simply not there."""
    found = [Mount("read-only", "/usr")]
    for path in TOP_LEVEL_SYSTEM_DIRS:
        if os.path.islink(path):
            found.append(Mount("symlink", path, target=os.readlink(path)))
        elif os.path.isdir(path):
            found.append(Mount("read-only", path))
    found += [Mount("read-only", f"/etc/{name}") for name in ETC_PATHS if os.path.exists(f"/etc/{name}")]
    found += [Mount("proc", "/proc"), Mount("dev", "/dev")]
    # Both in memory, private to the run: no larger than the memory limit (which a cgroup also charges them to).
    shm = "/dev/shm"  # noqa: S108 - the sandbox's own
    found += [Mount("tmpfs", shm, size=limits.memory_mb * MB), Mount("tmpfs", TMP, size=limits.memory_mb * MB)]
    found += [Mount("read-only", prefix) for prefix in python_prefixes()]
    if worktree is not None:
        found.append(Mount("read-write", str(worktree)))
    return found


def _bwrap_mount_args(found: list[Mount]) -> list[str]:
    args: list[str] = []
    for mount in found:
        if mount.kind == "read-only":
            args += ["--ro-bind", mount.path, mount.path]
        elif mount.kind == "read-write":
            args += ["--bind", mount.path, mount.path]
        elif mount.kind == "symlink":
            args += ["--symlink", mount.target, mount.path]
        elif mount.kind == "tmpfs":
            args += ["--size", str(mount.size), "--tmpfs", mount.path]
        else:
            args += [f"--{mount.kind}", mount.path]
    # The root itself is a tmpfs bwrap makes to hold the rest: read-only once it does. /dev too (its devices still
    # work, /dev/shm is a mount of its own): a writable /dev would be memory no limit counts without a cgroup.
    return [*args, "--remount-ro", "/dev", "--remount-ro", "/"]


def hidden() -> list[tuple[str, str]]:
    """What a test run must not see, for the queue page: (what, path)."""
    return [
        ("the data directory (database, keys, secrets)", str(settings.DATA_DIR)),
        ("the other proposals' worktrees", str(Path(settings.DATA_DIR) / "worktrees")),
        ("the live tree (but its virtualenv)", str(settings.SELF_MODIFY_REPO)),
        ("home directories", "/root, /home"),
    ]


@dataclass(frozen=True)
class Overview:
    """The sandbox as the queue page shows it."""

    unavailable: str | None
    unsandboxed_allowed: bool
    command: str
    limits: Limits
    read_only: list[str]
    hidden: list[tuple[str, str]]
    environment: list[str]


def overview() -> Overview:
    found = mounts(None, limits())
    return Overview(
        unavailable=unavailable_reason(),
        unsandboxed_allowed=settings.SELF_MODIFY_UNSANDBOXED_TESTS,
        command=settings.SELF_MODIFY_TEST_COMMAND,
        limits=limits(),
        read_only=[m.path for m in found if m.kind == "read-only"],
        hidden=hidden(),
        environment=sorted(environment()),
    )


# --- availability ---


def unavailable_reason() -> str | None:
    """None when a sandbox can be made here; otherwise why not (probed once per process and bubblewrap path)."""
    return _probe(settings.SANDBOX_BWRAP)


@functools.cache
def _probe(bwrap: str) -> str | None:
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux (bubblewrap and namespaces); this is {sys.platform}"
    path = shutil.which(bwrap)
    if path is None:
        return (
            f"bubblewrap is not installed: {bwrap!r} was not found (on Debian: make sandbox, or apt install bubblewrap)"
        )
    argv = [path, *BWRAP_OPTIONS, *_bwrap_mount_args(mounts(None, limits())), "--", "true"]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_SECONDS, env=environment(), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap ({path}) could not be run: {exc}"
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", errors="replace").strip()[:500] or f"exit status {done.returncode}"
        return f"bubblewrap ({path}) cannot make a sandbox here (namespaces refused?): {said}"
    return None


# --- limits: a cgroup of the run's own, or rlimits ---


@dataclass(frozen=True)
class _Hierarchy:
    version: int
    mount: Path
    root: str  # the part of the hierarchy the mount shows


def _hierarchies() -> dict[str, _Hierarchy]:
    """The mounted cgroup hierarchies: controller name -> hierarchy for v1; "" -> the v2 one."""
    found: dict[str, _Hierarchy] = {}
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as info:
        for line in info:
            fields, _, tail = line.partition(" - ")
            parts, rest = fields.split(), tail.split()
            if len(parts) < 5 or len(rest) < 3:
                continue
            mount = Path(parts[4].replace("\\040", " "))
            if rest[0] == "cgroup2":
                found.setdefault("", _Hierarchy(2, mount, parts[3]))
            elif rest[0] == "cgroup":
                for option in rest[2].split(","):
                    found.setdefault(option, _Hierarchy(1, mount, parts[3]))
    return found


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and "" -> its v2 path."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                found[name] = path
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _count(text: str, key: str) -> int:
    """The number after `key` in a flat-keyed cgroup file (pids.events, memory.events, memory.oom_control)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


class _Cgroups:
    """The run's own cgroups (one directory per hierarchy used) with the limits written in; `close` kills what is
    left in them and removes them."""

    def __init__(self, limits: Limits, *, enabled: bool) -> None:
        self.limits = limits
        self.dirs: dict[Path, int] = {}  # directory -> cgroup version
        self.controllers: dict[str, Path] = {}
        if not enabled:
            return
        name = f"timmy-sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        hierarchies, own = _hierarchies(), _own_cgroups()
        for controller in ("pids", "memory"):
            try:
                self._add(controller, name, hierarchies, own)
            except OSError as exc:
                logger.debug("no %s cgroup for the sandbox: %s", controller, exc)

    def _parent(self, controller: str, hierarchies: dict[str, _Hierarchy], own: dict[str, str]) -> tuple[Path, int]:
        hierarchy = hierarchies.get(controller)
        key = controller
        if hierarchy is None:
            hierarchy, key = hierarchies.get(""), ""
        if hierarchy is None or key not in own:
            raise OSError(f"no cgroup hierarchy has the {controller} controller")
        path = own[key]
        if not _is_within(path, hierarchy.root):
            raise OSError(f"this process's cgroup {path} is outside the mounted part {hierarchy.root}")
        relative = os.path.relpath(path, hierarchy.root)
        return (hierarchy.mount / relative).resolve(), hierarchy.version

    def _add(self, controller: str, name: str, hierarchies: dict[str, _Hierarchy], own: dict[str, str]) -> None:
        parent, version = self._parent(controller, hierarchies, own)
        if version == 2 and controller not in _read(parent / "cgroup.subtree_control").split():
            if controller not in _read(parent / "cgroup.controllers").split():
                raise OSError(f"the {controller} controller is not delegated to {parent}")
            # Refused (EBUSY) when this cgroup holds processes and is not the root: then there is no v2 limit.
            (parent / "cgroup.subtree_control").write_text(f"+{controller}")
        group = parent / name
        if group not in self.dirs:
            group.mkdir()
            self.dirs[group] = version
        if not os.access(group / "cgroup.procs", os.W_OK):
            raise OSError(f"{group}/cgroup.procs is not writable")
        if controller == "pids":
            (group / "pids.max").write_text(str(self.limits.processes))
        elif version == 1:
            (group / "memory.limit_in_bytes").write_text(str(self.limits.memory_mb * MB))
            # Swap must not stretch the limit; the file is missing (or refuses) without swap accounting.
            with contextlib.suppress(OSError):
                (group / "memory.memsw.limit_in_bytes").write_text(str(self.limits.memory_mb * MB))
        else:
            (group / "memory.max").write_text(str(self.limits.memory_mb * MB))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")
        self.controllers[controller] = group

    @property
    def description(self) -> str:
        if not self.controllers:
            return ""
        versions = sorted({self.dirs[group] for group in self.controllers.values()})
        return f"cgroup v{'+v'.join(map(str, versions))} ({', '.join(sorted(self.controllers))})"

    def hits(self) -> list[str]:
        found = []
        pids = self.controllers.get("pids")
        if pids is not None and (refused := _count(_read(pids / "pids.events"), "max")):
            found.append(f"processes: {refused} fork(s) refused at the limit of {self.limits.processes}")
        memory = self.controllers.get("memory")
        if memory is not None:
            events = "memory.oom_control" if self.dirs[memory] == 1 else "memory.events"
            if killed := _count(_read(memory / events), "oom_kill"):
                found.append(f"memory: {killed} process(es) killed at the limit of {self.limits.memory_mb} MB")
        return found

    def close(self) -> None:
        for group, version in self.dirs.items():
            deadline = time.monotonic() + KILL_WAIT_SECONDS
            while True:
                if version == 2 and (group / "cgroup.kill").exists():
                    with contextlib.suppress(OSError):
                        (group / "cgroup.kill").write_text("1")
                for pid in _read(group / "cgroup.procs").split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
                try:
                    group.rmdir()
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        logger.warning("could not remove the sandbox cgroup %s: %s", group, exc)
                        break
                    time.sleep(0.05)


def _user_tasks(uid: int) -> int:
    """Tasks (threads count) of `uid`, as RLIMIT_NPROC counts them."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        text = _read(status)
        real_uid = next((line.split()[1] for line in text.splitlines() if line.startswith("Uid:")), None)
        if real_uid == str(uid):
            total += _count(text.replace(":", ""), "Threads") or 1
    return total


def _rlimits(limits: Limits, cgroups: _Cgroups) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """(rlimits to set, how each limit is enforced, limits not enforced)."""
    rlimits = [("RLIMIT_FSIZE", limits.file_bytes), ("RLIMIT_CORE", 0)]
    by: list[str] = []
    not_enforced: list[str] = []
    if "memory" not in cgroups.controllers:
        rlimits.append(("RLIMIT_DATA", limits.memory_mb * MB))
        by.append("RLIMIT_DATA (per process)")
    if "pids" not in cgroups.controllers:
        if os.getuid() == 0:
            not_enforced.append("processes")  # the kernel does not apply RLIMIT_NPROC to root
        else:
            # RLIMIT_NPROC counts all the user's tasks, the worker's included: allow this many more.
            rlimits.append(("RLIMIT_NPROC", _user_tasks(os.getuid()) + limits.processes))
            by.append("RLIMIT_NPROC (the user's processes)")
    return rlimits, by, not_enforced


# --- the run ---


def run(
    command: str, *, worktree: Path, env: Mapping[str, str] | None = None, limits: Limits | None = None
) -> gitops.TestRun:
    """Run `command` (split like a shell would, no shell) in `worktree` inside the sandbox; on wall time kill the
    whole sandbox. Failures of the code under test are in the result; SandboxUnavailable only when no sandbox can
    be made here."""
    reason = unavailable_reason()
    if reason is not None:
        raise SandboxUnavailable(reason)
    chosen = limits if limits is not None else _settings_limits()
    argv = shlex.split(command)
    if not argv:
        raise gitops.GitOpsError("the test command is empty")
    tree = worktree.resolve()
    _refuse_exposing(tree)
    bwrap = shutil.which(settings.SANDBOX_BWRAP) or settings.SANDBOX_BWRAP
    sandbox_argv = [bwrap, *BWRAP_OPTIONS, *_bwrap_mount_args(mounts(tree, chosen)), "--chdir", str(tree), "--", *argv]
    cgroups = _Cgroups(chosen, enabled=settings.SANDBOX_CGROUPS)
    try:
        rlimits, by, not_enforced = _rlimits(chosen, cgroups)
        spec = {"cgroups": [str(group / "cgroup.procs") for group in cgroups.dirs], "rlimits": rlimits}
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", WRAPPER, json.dumps(spec), *sandbox_argv],
                cwd=tree,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(env) if env is not None else environment(),
            )
        except OSError as exc:  # this interpreter itself could not be started
            raise gitops.GitOpsError(f"the sandbox could not be started: {exc}") from exc
        output, written, timed_out = _collect(process, seconds=chosen.wall_seconds, keep=chosen.output_bytes)
        duration = time.monotonic() - started
        hits = cgroups.hits()
    finally:
        cgroups.close()
    text = output.decode("utf-8", errors="replace")
    passed_count, failed_count = gitops.pytest_counts(text)
    tail = text[-TAIL_CHARS:]
    cut = written > chosen.output_bytes
    if cut:
        tail = f"[sandbox] output cut: {written:,} bytes written, only the last {chosen.output_bytes:,} kept\n{tail}"
    if timed_out:
        tail += f"\n[sandbox] killed after the wall-time limit of {chosen.wall_seconds:g} s"
    for hit in hits:
        tail += f"\n[sandbox] limit reached: {hit}"
    return gitops.TestRun(
        passed=process.returncode == 0 and not timed_out,
        passed_count=passed_count,
        failed_count=failed_count,
        duration_seconds=duration,
        output_tail=tail,
        timed_out=timed_out,
        sandbox=SANDBOX,
        limited_by=", ".join(filter(None, [cgroups.description, *by])),
        limits_not_enforced=tuple(not_enforced),
        limits_hit=tuple(hits),
        output_cut=cut,
    )


_settings_limits = limits  # `run` has a parameter of that name


class _Tail:
    """The last `keep` bytes of a stream, and how many it had in all."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.data = bytearray()
        self.written = 0

    def add(self, chunk: bytes) -> None:
        self.written += len(chunk)
        self.data += chunk
        if len(self.data) > self.keep:
            del self.data[: len(self.data) - self.keep]


def _collect(process: subprocess.Popen[bytes], *, seconds: float, keep: int) -> tuple[bytes, int, bool]:
    """(the last `keep` bytes of the output, bytes written in all, whether the wall time ran out). On wall time,
    and on any error here, the process group is killed: bwrap's death takes its whole PID namespace with it."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    tail = _Tail(keep)
    deadline = time.monotonic() + seconds
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            for chunk in _chunks(fd, selector, deadline):
                tail.add(chunk)
            timed_out = time.monotonic() >= deadline
            if not timed_out:
                try:
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:  # it closed its output but kept running
                    timed_out = True
            if timed_out:
                _kill(process)
                for chunk in _chunks(fd, selector, time.monotonic() + KILL_WAIT_SECONDS):
                    tail.add(chunk)
    except BaseException:
        _kill(process)
        raise
    finally:
        process.stdout.close()
    process.wait(timeout=KILL_WAIT_SECONDS)
    return bytes(tail.data), tail.written, timed_out


def _chunks(fd: int, selector: selectors.BaseSelector, deadline: float) -> Iterator[bytes]:
    """What comes out of `fd` until it closes or `deadline` passes."""
    while (left := deadline - time.monotonic()) > 0:
        if not selector.select(left):
            continue
        chunk = os.read(fd, READ_CHUNK)
        if not chunk:
            return
        yield chunk


def _kill(process: subprocess.Popen[bytes]) -> None:
    # The wrapper became bwrap, which leads its own process group (start_new_session).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _refuse_exposing(tree: Path) -> None:
    """A worktree that contains the data dir or the live tree would make them visible, and writable."""
    for what, path in (
        ("data directory", settings.DATA_DIR),
        ("live tree", settings.SELF_MODIFY_REPO),
        ("project", settings.BASE_DIR),
    ):
        if _is_within(os.path.realpath(path), str(tree)):
            raise gitops.GitOpsError(f"refusing to sandbox {tree}: it contains the {what} {path}")


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")
