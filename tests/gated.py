"""Processes that start together: each waits for a line on stdin before its racing part, so a race test races."""

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Gated:
    def __init__(self, processes: list[subprocess.Popen[str]]) -> None:
        self.processes = processes

    def wait_ready(self) -> None:
        """For processes that print "ready" once set up (and before they read stdin)."""
        for process in self.processes:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"

    def release(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()

    def answers(self) -> list[str]:
        """One line from each process, after a release."""
        return [process.stdout.readline().strip() for process in self.processes]  # type: ignore[union-attr]

    def finish(self, timeout: float) -> list[tuple[str, str, int]]:
        """Close their stdin and wait: (stdout, stderr, return code) of each."""
        results = []
        for process in self.processes:
            stdout, stderr = process.communicate(timeout=timeout)
            results.append((stdout, stderr, process.returncode))
        return results


@contextmanager
def gated(commands: Sequence[Sequence[str]], *, env: dict[str, str]) -> Iterator[Gated]:
    """Start one process per command (`python` + arguments); any still running at the end is killed."""
    processes = [
        subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    try:
        yield Gated(processes)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
