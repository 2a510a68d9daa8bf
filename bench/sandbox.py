"""Benchmark of the sandbox of proposal tests (issue 15): the same test run inside and outside it.

One run, in a fresh temporary data dir (DEBUG off). A small git repository is made in it (a package and --files
test files of --tests tests each, with the pytest.ini a project has) and a worktree of it where the self-modify
loop makes them (`<data dir>/worktrees/`). Then, --rounds times, alternating which side goes first:

- inside: `sandbox.run` with the proposal test command, the limits from the settings and the environment of a
  proposal's test run, as `services.run_proposal_tests` does (bubblewrap, cgroups where they can be made);
- outside: `gitops.run_tests` with the same command and the same environment (HOME and TMPDIR in a temporary
  directory), as before the sandbox.

The command is the virtualenv's `python -m pytest -q -p no:cacheprovider -p no:django`: pytest with every
installed plugin but this project's Django one, so a run costs what a small project's would. Each side's time is the
run's wall time as the caller sees it (TestRun.duration_seconds, from before the process starts until it is reaped).
The same for `true` on both sides gives the sandbox's fixed cost with nothing to run.

Figures: `median_inside_s`, `median_outside_s`, and `sandbox_overhead_s` = their difference (target: at most
+0.5 s); `true_overhead_s` likewise for `true`. Also `restore_s`, the median time `services.run_proposal_tests` takes
after each run to put the worktree back as committed (gitops.restore_worktree), which it does inside or outside.

Run from the project root: `.venv/bin/python bench/sandbox.py` (about 30 s with the defaults; --help). Progress goes
to stderr; the last line of stdout is one JSON object with the figures.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from isolated import DATA_DIR, code_version, say  # first: sets up Django in a temporary data dir

# isort: split
import django
import git
from django.conf import settings

from apps.upgrades import gitops, sandbox, services

OVERHEAD_TARGET_S = 0.5
IDENTITY = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}
COMMAND = f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider -p no:django"


def make_worktree(files: int, tests: int) -> Path:
    repo = DATA_DIR / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    body = "".join(f"\n\ndef test_add_{n}():\n    assert add({n}, 1) == {n + 1}\n" for n in range(tests))
    for number in range(files):
        (repo / "tests" / f"test_calc_{number}.py").write_text(f"from pkg.calc import add\n{body}")
    with git.Repo.init(repo, initial_branch="main") as r:
        r.git.add("--all")
        r.git.commit("-m", "bench", env=IDENTITY)
    return gitops.create_worktree(repo, branch="self-modify/bench-1", base="main", worktrees_dir=DATA_DIR / "worktrees")


def inside(command: str, worktree: Path) -> gitops.TestRun:
    return sandbox.run(command, worktree=worktree, env=services.test_environment())


def outside(command: str, worktree: Path) -> gitops.TestRun:
    with tempfile.TemporaryDirectory(prefix="bench-outside-") as tmp:
        return gitops.run_tests(
            worktree,
            command,
            timeout_seconds=settings.SELF_MODIFY_TEST_TIMEOUT_SECONDS,
            env=services.test_environment(tmp=tmp),
        )


def alternate(
    command: str, worktree: Path, rounds: int, *, expect: int | None
) -> tuple[list[float], list[float], gitops.TestRun]:
    """Inside and outside times of `rounds` rounds, each side first in every other round."""
    times: dict[str, list[float]] = {"inside": [], "outside": []}
    sides: dict[str, Callable[[str, Path], gitops.TestRun]] = {"inside": inside, "outside": outside}
    last = None
    for number in range(rounds):
        order = ("inside", "outside") if number % 2 == 0 else ("outside", "inside")
        for side in order:
            run = sides[side](command, worktree)
            if not run.passed or (expect is not None and run.passed_count != expect):
                raise SystemExit(f"the {side} run did not pass as expected:\n{run.output_tail}")
            times[side].append(run.duration_seconds)
            if side == "inside":
                last = run
    assert last is not None
    return times["inside"], times["outside"], last


def figures(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def bwrap_version() -> str:
    found = subprocess.run([settings.SANDBOX_BWRAP, "--version"], capture_output=True, text=True, check=False)
    return found.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=11, help="rounds of the pytest run on each side (default 11)")
    parser.add_argument("--files", type=int, default=5, help="test files in the repository (default 5)")
    parser.add_argument("--tests", type=int, default=20, help="tests in each file (default 20)")
    parser.add_argument("--true-rounds", type=int, default=21, help="rounds of `true` on each side (default 21)")
    args = parser.parse_args()
    if args.rounds < 1 or args.files < 1 or args.tests < 1 or args.true_rounds < 1:
        parser.error("--rounds, --files, --tests and --true-rounds must be at least 1")
    reason = sandbox.unavailable_reason()
    if reason is not None:
        raise SystemExit(f"no sandbox can be made here: {reason}")

    say(f"data dir {DATA_DIR} (removed at exit); DEBUG off; {bwrap_version()}")
    load_before = os.getloadavg()
    started = time.monotonic()
    worktree = make_worktree(args.files, args.tests)
    # One untimed run each, so that neither side pays for a cold page cache.
    inside(COMMAND, worktree)
    outside(COMMAND, worktree)
    say(f"{args.rounds} rounds of `{COMMAND}` ({args.files} files of {args.tests} tests) inside and outside")
    test_in, test_out, last = alternate(COMMAND, worktree, args.rounds, expect=args.files * args.tests)
    say(f"inside {figures(test_in)}, outside {figures(test_out)}")
    say(f"{args.true_rounds} rounds of `true` inside and outside")
    true_in, true_out, _ = alternate("true", worktree, args.true_rounds, expect=None)
    say(f"inside {figures(true_in)}, outside {figures(true_out)}")
    pointer = gitops.git_pointer(worktree)
    restores = []
    for _ in range(args.rounds):
        began = time.monotonic()
        gitops.restore_worktree(worktree, pointer)
        restores.append(time.monotonic() - began)
    say(f"restoring the worktree after a run: {figures(restores)}")
    overhead = statistics.median(test_in) - statistics.median(test_out)
    result = {
        "benchmark": "sandbox",
        "code": code_version(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "machine": f"{platform.system()} {platform.release()}, {os.cpu_count()} cpus",
        "bwrap": bwrap_version(),
        "as_root": os.getuid() == 0,
        "limited_by": last.limited_by,
        "limits_not_enforced": list(last.limits_not_enforced),
        "rounds": args.rounds,
        "tests_per_run": args.files * args.tests,
        "inside_s": figures(test_in),
        "outside_s": figures(test_out),
        "median_inside_s": round(statistics.median(test_in), 4),
        "median_outside_s": round(statistics.median(test_out), 4),
        "sandbox_overhead_s": round(overhead, 4),
        "sandbox_overhead_target_s": OVERHEAD_TARGET_S,
        "target_met": overhead <= OVERHEAD_TARGET_S,
        "true_inside_s": figures(true_in),
        "true_outside_s": figures(true_out),
        "true_overhead_s": round(statistics.median(true_in) - statistics.median(true_out), 4),
        "restore_s": figures(restores),
        "load_average_before": round(load_before[0], 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
