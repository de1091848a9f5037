"""``jerp-run`` (``python -m jerp_jobs.supervise``): a worker and Beat, each started again when
it exits.

Outside a container platform nothing restarts a worker or Beat that exits (an out-of-memory
kill, a crash, a lost Beat lock); their work then waits for someone to notice. This runs
``celery -A jerp_jobs worker`` and ``celery -A jerp_jobs beat`` as children and:

- starts a child that exited again, after a wait that doubles with each quick exit (1 s, 2 s,
  4 s ... up to a minute) and starts over at 1 s once the child has run for a minute; every
  exit and restart is logged with the child's exit code or signal;
- on SIGTERM or SIGINT stops both: the signal is passed on (a worker's warm shutdown lets its
  running steps finish), a child still running after ``--grace`` seconds (default 60, like the
  compose stack's stop grace period) is killed with its whole process group, and ``jerp-run``
  exits 0; a second signal kills them at once;
- runs each child in its own process group, so a terminal's Ctrl-C reaches the children once,
  through this process, and (on Linux) has each child sent SIGTERM if this process dies.

The settings are checked before anything starts: a configuration error exits 2 with its
message instead of restarting children that can only fail. In the compose stack the
services' ``restart:`` policy does this job; ``jerp-run`` is for a plain host.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jerp_jobs.log import get_logger

log = get_logger("jerp_jobs.supervise")

#: the children: a name and the arguments after ``python -m celery -A jerp_jobs``
CHILDREN: tuple[tuple[str, tuple[str, ...]], ...] = (("worker", ("worker",)), ("beat", ("beat",)))


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    backoff: float = 0.0
    starts: int = 0


def _pdeathsig() -> Callable[[], None] | None:
    """On Linux, a function for the child (between fork and exec) that has the kernel send it
    SIGTERM when this process dies; loaded here, so the child only makes one system call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    """Keeps every child running until :meth:`request_stop`; :meth:`run` returns the exit code."""

    def __init__(self, children: Sequence[tuple[str, Sequence[str]]], *, first_backoff: float = 1.0,
                 max_backoff: float = 60.0, stable_after: float = 60.0, grace: float = 60.0,
                 poll: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        self.children = [Child(name, list(argv), backoff=first_backoff) for name, argv in children]
        self.first_backoff, self.max_backoff, self.stable_after = first_backoff, max_backoff, stable_after
        self.grace, self.poll, self.clock = grace, poll, clock
        self._received: list[int] = []
        self._preexec = _pdeathsig()
        self._stop_signal: int | None = None
        self._kill_at: float | None = None

    # -- signals -----------------------------------------------------------------------------

    def request_stop(self, signum: int, _frame: Any = None) -> None:
        """The SIGTERM/SIGINT handler: only notes the signal; the loop acts on it."""
        self._received.append(signum)

    def _handle_signals(self) -> None:
        while self._received:
            signum = self._received.pop(0)
            name = signal.Signals(signum).name
            if self._stop_signal is not None:  # the second one: no more waiting
                log.warning("supervise.killing", signal=name)
                self._kill_all()
                continue
            self._stop_signal = signum
            self._kill_at = self.clock() + self.grace
            log.info("supervise.stopping", signal=name, grace_s=self.grace)
            for child in self.children:
                self._signal(child, signum)

    def _signal(self, child: Child, signum: int) -> None:
        if child.proc is not None and child.proc.poll() is None:
            try:
                os.killpg(child.proc.pid, signum)
            except ProcessLookupError:
                pass

    def _kill_all(self) -> None:
        for child in self.children:
            self._signal(child, signal.SIGKILL)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        for child in self.children:
            self._start(child)
        while True:
            self._handle_signals()
            now = self.clock()
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    self._exited(child, now)
                if self._stop_signal is None and child.proc is None and now >= child.restart_at:
                    self._start(child)
            if self._stop_signal is not None:
                if all(child.proc is None for child in self.children):
                    log.info("supervise.stopped")
                    return 0
                if self._kill_at is not None and now >= self._kill_at:
                    log.warning("supervise.grace_over", grace_s=self.grace,
                                running=[c.name for c in self.children if c.proc is not None])
                    self._kill_all()
                    self._kill_at = None
            time.sleep(self.poll)

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, stdin=subprocess.DEVNULL, process_group=0,
                                      preexec_fn=self._preexec)
        child.started_at = self.clock()
        child.starts += 1
        log.info("supervise.started", child=child.name, pid=child.proc.pid, start=child.starts)

    def _exited(self, child: Child, now: float) -> None:
        assert child.proc is not None
        code, pid = child.proc.returncode, child.proc.pid
        ran = now - child.started_at
        child.proc = None
        how = {"exit_code": code} if code >= 0 else {"signal": signal.Signals(-code).name}
        if self._stop_signal is not None:
            log.info("supervise.child_stopped", child=child.name, pid=pid, **how)
            return
        if ran >= self.stable_after:
            child.backoff = self.first_backoff
        delay, child.backoff = child.backoff, min(self.max_backoff, child.backoff * 2)
        child.restart_at = now + delay
        log.warning("supervise.child_exited", child=child.name, pid=pid, ran_s=round(ran, 1),
                    restart_in_s=delay, **how)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jerp-run", description="Run a Celery worker and Beat for jerp_jobs, restarting either when it exits.")
    parser.add_argument("--grace", type=float, default=60.0, metavar="SECONDS",
                        help="how long a stop waits for the children before killing them (default 60)")
    args = parser.parse_args(argv)
    if args.grace < 0:
        parser.error("--grace must be 0 or more seconds")

    from jerp_jobs import log as logging_setup
    from jerp_jobs.errors import ConfigError
    from jerp_jobs.settings import get_settings

    try:
        settings = get_settings()  # the .env file too, as the children will read it
    except ConfigError as exc:
        print(f"jerp-run: {exc}", file=sys.stderr)
        return 2
    logging_setup.configure(secrets=settings.secret_values())

    celery = [sys.executable, "-m", "celery", "-A", "jerp_jobs"]
    supervisor = Supervisor([(name, [*celery, *rest]) for name, rest in CHILDREN], grace=args.grace)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
