"""Starting and stopping Celery worker processes and their companions (beat, web servers), as
used by `sagaflow demo`, `sagaflow stack` and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from celery import Celery

from sagaflow.errors import WorkerStartError


@dataclass
class WorkerSpec:
    """One `celery -A APP worker -Q QUEUES` process."""

    name: str
    app: str
    queues: Sequence[str]
    pool: str = "solo"
    concurrency: int | None = None
    extra_args: Sequence[str] = field(default_factory=tuple)

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            "-Q",
            ",".join(self.queues),
            "-n",
            f"{self.name}@%h",
            "-P",
            self.pool,
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
        ]
        if self.concurrency is not None:
            args += ["-c", str(self.concurrency)]
        return [*args, *self.extra_args]


@dataclass
class CommandSpec:
    """Any other process (beat, Flower, a web server). Ready once running, or, with `url`, once
    that URL answers HTTP (any status: a 401 is an answer)."""

    name: str
    args: Sequence[str]
    url: str | None = None

    def command(self) -> list[str]:
        return list(self.args)


@dataclass
class WorkerProcess:
    spec: WorkerSpec | CommandSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class WorkerGroup:
    """Worker processes started together and stopped together, whatever happens."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, cwd: Path | None = None) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.cwd = cwd
        self.workers: list[WorkerProcess] = []

    def start(self, spec: WorkerSpec | CommandSpec) -> WorkerProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(
            spec.command(),
            env=self.env,
            cwd=self.cwd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, we stop them cleanly
        )
        worker = WorkerProcess(spec, process, log_path, log_file)
        self.workers.append(worker)
        return worker

    def wait_ready(self, app: Celery, timeout: float = 60.0) -> None:
        """Poll until every worker answers `celery inspect ping` and every process with a URL
        answers HTTP; raise with the log of one that exited or is still pending at `timeout`."""
        deadline = time.monotonic() + timeout
        pending = {w.spec.name for w in self.workers if isinstance(w.spec, WorkerSpec)}
        workers = len(pending)
        urls = {
            w.spec.name: w.spec.url
            for w in self.workers
            if isinstance(w.spec, CommandSpec) and w.spec.url
        }
        pending |= set(urls)
        # A reply later than the window is dropped, so a busy machine gets a longer one each
        # round; the ping returns as soon as every worker of the group has answered.
        ping_window = 0.5
        while True:
            for worker in self.workers:
                if not worker.alive:
                    raise WorkerStartError(
                        f"{worker.spec.name!r} exited with code "
                        f"{worker.process.returncode}; end of {worker.log_path}:\n"
                        f"{worker.log_tail()}"
                    )
            for name, url in urls.items():
                if name in pending and answers_http(url):
                    pending.discard(name)
            if not pending:
                return
            if pending - set(urls):
                for reply in app.control.ping(timeout=ping_window, limit=workers) or []:
                    for hostname in reply:
                        pending.discard(hostname.split("@", 1)[0])
                ping_window = min(ping_window * 2, 4.0)
            else:
                time.sleep(0.1)
            if pending and time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {w.spec.name} ---\n{w.log_tail(15)}"
                    for w in self.workers
                    if w.spec.name in pending
                )
                raise WorkerStartError(
                    f"not ready after {timeout:g}s: {', '.join(sorted(pending))}\n{tails}"
                )

    def stop_worker(self, worker: WorkerProcess, timeout: float = 15.0) -> None:
        """Warm-shut one worker down (SIGKILL if it does not stop within `timeout`)."""
        if worker.alive:
            worker.process.send_signal(signal.SIGTERM)
            _wait_or_kill(worker.process, timeout)
        worker.log_file.close()
        self.workers.remove(worker)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (warm shutdown) to all, then SIGKILL whatever is still running.

        SIGTERM goes to each main process only: a prefork worker then lets its pool children
        finish their tasks, where a signal to the whole group would kill them mid-task."""
        for worker in self.workers:
            if worker.alive:
                worker.process.send_signal(signal.SIGTERM)
            else:  # a main process that died may have left pool children in its group
                _signal_group(worker.process, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            _wait_or_kill(worker.process, max(0.1, deadline - time.monotonic()))
            worker.log_file.close()
        self.workers.clear()

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def answers_http(url: str, timeout: float = 2.0) -> bool:
    """Whether something answers HTTP at `url`, whatever the status."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: no proxy
    try:
        with direct.open(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _wait_or_kill(process: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=10)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
