"""Run commands as local subprocesses in a bench folder.

Each command runs with no shell, stdin on ``/dev/null``, stdout and stderr merged into one
pipe, and in a session (and process group) of its own, so that a timeout can signal the whole
tree it started: SIGTERM to the group first, SIGKILL to the group after ``kill_grace``
seconds. Output is read as it comes and handed to ``on_output`` line by line in the caller's
thread.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from jerp_jobs.errors import CommandTimeout, ExecutorUnavailable
from jerp_jobs.executors._argv import check_argv, check_timeout, describe_argv, format_seconds
from jerp_jobs.executors.base import CommandResult, OutputCallback, OutputTail

_POLL_S = 0.1
_READ_SIZE = 65536


class LocalExecutor:
    """Runs argv lists as subprocesses with ``bench_dir`` as the working directory.

    ``env`` holds variables added to (or overriding) this process's environment for every
    command. ``kill_grace`` is how long a timed-out command gets between SIGTERM and SIGKILL.
    ``linger`` is how long output is still read after the command itself has exited, while
    processes it left behind keep the pipe open; they are then left alone.

    A non-zero exit is returned, not raised. A process killed by a signal reports
    ``128 + signal`` as its exit code, the way a shell (and ``docker exec``) does.
    """

    def __init__(
        self,
        bench_dir: Path | str,
        *,
        env: Mapping[str, str] | None = None,
        kill_grace: float = 5.0,
        linger: float = 2.0,
    ) -> None:
        self.bench_dir = Path(bench_dir)
        self.env = dict(env) if env is not None else {}
        self.kill_grace = kill_grace
        self.linger = linger

    def __repr__(self) -> str:
        return f"LocalExecutor(bench_dir={str(self.bench_dir)!r})"

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        args = check_argv(argv)
        timeout = check_timeout(timeout)
        if not self.bench_dir.is_dir():
            raise ExecutorUnavailable(
                f"bench folder {str(self.bench_dir)!r} does not exist or is not a folder",
                bench_dir=str(self.bench_dir),
            )

        tail = OutputTail(on_output)
        started = time.monotonic()
        proc = self._spawn(args)
        try:
            assert proc.stdout is not None
            with proc.stdout, selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                finished = self._pump(proc, selector, tail, deadline=started + timeout)
                if not finished:
                    self._stop_group(proc, selector, tail)
                    tail.close()
                    raise CommandTimeout(
                        f"{describe_argv(args)} ran past its timeout of "
                        f"{format_seconds(timeout)} and was killed",
                        timeout=timeout,
                        output_tail=tail.text(),
                    )
        except BaseException:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            raise
        tail.close()
        return CommandResult(
            argv=args,
            exit_code=_exit_code(proc.returncode),
            duration_s=time.monotonic() - started,
            output=tail.text(),
        )

    def _spawn(self, args: tuple[str, ...]) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env} if self.env else None
        try:
            return subprocess.Popen(
                args,
                cwd=self.bench_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                bufsize=0,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError as exc:
            if not self.bench_dir.is_dir():
                raise ExecutorUnavailable(
                    f"bench folder {str(self.bench_dir)!r} does not exist",
                    bench_dir=str(self.bench_dir),
                ) from exc
            raise ExecutorUnavailable(
                f"program {args[0]!r} not found (searched PATH from {str(self.bench_dir)!r})",
                program=args[0],
            ) from exc
        except PermissionError as exc:
            raise ExecutorUnavailable(
                f"program {args[0]!r} cannot be run: permission denied",
                program=args[0],
            ) from exc
        except OSError as exc:
            raise ExecutorUnavailable(
                f"cannot start {args[0]!r} in {str(self.bench_dir)!r}: {exc.strerror or exc}",
                program=args[0],
            ) from exc

    def _pump(
        self,
        proc: subprocess.Popen[bytes],
        selector: selectors.BaseSelector,
        tail: OutputTail,
        *,
        deadline: float,
    ) -> bool:
        """Read output until the command is done; False when ``deadline`` passes first.

        Done means the command exited and the pipe reached end of file, or the command exited
        ``linger`` seconds ago and something it left behind still holds the pipe open.
        """
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        eof = False
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None:
                if eof or now - exited_at >= self.linger:
                    return True
                wait = min(_POLL_S, exited_at + self.linger - now)
            else:
                if now >= deadline:
                    return False
                wait = min(_POLL_S, deadline - now)
            if eof:
                try:
                    proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    pass
                continue
            if selector.select(timeout=wait):
                chunk = os.read(fd, _READ_SIZE)
                if chunk:
                    tail.feed(chunk)
                else:
                    eof = True
                    selector.unregister(proc.stdout)

    def _stop_group(
        self,
        proc: subprocess.Popen[bytes],
        selector: selectors.BaseSelector,
        tail: OutputTail,
    ) -> None:
        """SIGTERM the command's process group, SIGKILL it after the grace, reap the leader."""
        pgid = proc.pid
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        while time.monotonic() < deadline:
            self._drain(proc, selector, tail, wait=_POLL_S)
            proc.poll()
            if not _group_alive(pgid):
                break
        else:
            _signal_group(pgid, signal.SIGKILL)
        proc.wait()
        # Members of the group that were re-parented are reaped by their new parent; give
        # that a moment so the caller sees the group gone.
        settle = time.monotonic() + self.kill_grace
        while _group_alive(pgid) and time.monotonic() < settle:
            self._drain(proc, selector, tail, wait=_POLL_S)
        self._drain(proc, selector, tail, wait=0)

    @staticmethod
    def _drain(
        proc: subprocess.Popen[bytes],
        selector: selectors.BaseSelector,
        tail: OutputTail,
        *,
        wait: float,
    ) -> None:
        """Read what output is ready (waiting at most ``wait`` for the first chunk)."""
        if proc.stdout is None or proc.stdout.closed or not selector.get_map():
            if wait:
                time.sleep(wait)
            return
        fd = proc.stdout.fileno()
        while selector.select(timeout=wait):
            chunk = os.read(fd, _READ_SIZE)
            if not chunk:
                selector.unregister(proc.stdout)
                return
            tail.feed(chunk)
            wait = 0


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode
