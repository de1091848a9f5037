"""Run commands as local subprocesses in a bench folder.

Each command runs with no shell, stdin on ``/dev/null`` (or a pipe carrying the ``stdin``
bytes, closed after them), stdout and stderr merged into one pipe, and in a session (and
process group) of its own, so that a timeout can signal the whole tree it started: SIGTERM
to the group first, SIGKILL to the group after ``kill_grace`` seconds. Processes that left the
group (``setsid``, a daemonising fork) are found by the file they hold open (``holders_of``,
the fence: ``/proc/<pid>/fd``) and get the same signals. Output is read as it comes and handed
to ``on_output`` line by line in the caller's thread.

Environment. A command gets only the variables in :data:`CHILD_ENV` (and every ``LC_*``)
taken from this process's environment, plus the names in ``pass_env`` (the operator's
opt-in, ``JERP_CHILD_ENV_EXTRA``), plus ``env``. Nothing else of the worker's environment
(its AWS, NPM or webhook secrets, the DB passwords) reaches bench.

User. bench refuses to run as root (``WARN: You should not run this command as root``, exit
1) unless the bench's ``sites/common_site_config.json`` names a ``frappe_user``, whom it then
becomes. So a worker running as root either names the bench's user (``user``,
``JERP_BENCH_USER``: every command runs as that user, its groups and home), or finds a
``frappe_user`` (every command, bench or not, then runs as that user: a lock probe or a
``grep`` run as root would leave root-owned files where Frappe must write), or is refused
every command, with the fix named, before anything starts (the workflows run bench inside a
``flock`` fence, so the refusal cannot wait for a command that starts with ``bench``). Run the worker as the bench's user and none applies.
"""

from __future__ import annotations

import json
import os
import pwd
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from jerp_jobs.errors import CommandRefused, CommandTimeout, ExecutorUnavailable
from jerp_jobs.executors._argv import (
    check_argv,
    check_holders_of,
    check_stdin,
    check_timeout,
    describe_argv,
    format_seconds,
)
from jerp_jobs.executors.base import CommandResult, OutputCallback, OutputTail

_POLL_S = 0.1
_READ_SIZE = 65536

#: Variables a command inherits from the worker's environment (and every ``LC_*``): what
#: bench, Python, click and the MariaDB clients need to run, and nothing secret.
CHILD_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")


#: Programs that run the rest of their argv as a command, and their options that take a value.
_WRAPPERS = {"flock": {"-w", "--wait", "--timeout", "-E", "--conflict-exit-code"},
             "timeout": {"-s", "--signal", "-k", "--kill-after"},
             "nice": {"-n", "--adjustment"}, "setsid": set(), "nohup": set()}


def _program(args: Sequence[str]) -> str:
    """The program an argv finally runs, past wrappers such as ``flock -w 9 -E 75 FILE bench …``."""
    index = 0
    while index < len(args):
        name = os.path.basename(args[index])
        takes_value = _WRAPPERS.get(name)
        if takes_value is None:
            return args[index]
        index += 1
        while index < len(args) and args[index].startswith("-"):
            index += 2 if args[index] in takes_value else 1
        if name == "flock":
            index += 1  # the lock file
        elif name == "timeout":
            index += 1  # the duration
    return args[0]


def child_environment(
    extra: Mapping[str, str] | None = None, pass_env: Sequence[str] = (), source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a command: the allowlisted variables of ``source`` (this process's
    environment), the ones named in ``pass_env``, then ``extra``."""
    source = os.environ if source is None else source
    wanted = set(CHILD_ENV) | set(pass_env)
    env = {k: v for k, v in source.items() if k in wanted or k.startswith("LC_")}
    env.update(extra or {})
    return env


class LocalExecutor:
    """Runs argv lists as subprocesses with ``bench_dir`` as the working directory.

    ``env`` holds variables set for every command, on top of the allowlisted ones
    (:func:`child_environment`); ``pass_env`` names more variables passed through from this
    process's environment. ``kill_grace`` is how long a timed-out command gets between SIGTERM and SIGKILL.
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
        pass_env: Sequence[str] = (),
        kill_grace: float = 5.0,
        linger: float = 2.0,
        user: str | None = None,
        bench_program: str | None = None,
    ) -> None:
        self.bench_dir = Path(bench_dir)
        #: run every command as this user (the worker must be root, or be that user)
        self.user = user or None
        #: the bench program; when set, a worker running as root without ``user`` or
        #: ``frappe_user`` is refused every command (bench would refuse it anyway)
        self.bench_program = bench_program
        self.env = dict(env) if env is not None else {}
        self.pass_env = tuple(pass_env)
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
        stdin: bytes | None = None,
        holders_of: str | None = None,
    ) -> CommandResult:
        args = check_argv(argv)
        timeout = check_timeout(timeout)
        stdin = check_stdin(stdin)
        holders_of = check_holders_of(holders_of)
        if not self.bench_dir.is_dir():
            raise ExecutorUnavailable(
                f"bench folder {str(self.bench_dir)!r} does not exist or is not a folder",
                bench_dir=str(self.bench_dir),
            )

        self._check_user(args)
        tail = OutputTail(on_output)
        started = time.monotonic()
        proc = self._spawn(args, with_stdin=stdin is not None)
        fence = self.bench_dir / holders_of if holders_of else None
        try:
            if stdin is not None:
                _feed(proc, stdin)
            assert proc.stdout is not None
            with proc.stdout, selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                finished = self._pump(proc, selector, tail, deadline=started + timeout)
                if not finished:
                    self._stop_group(proc, selector, tail, fence)
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
                if fence is not None:
                    _signal_holders(fence, signal.SIGKILL)
                proc.wait()
            raise
        tail.close()
        return CommandResult(
            argv=args,
            exit_code=_exit_code(proc.returncode),
            duration_s=time.monotonic() - started,
            output=tail.text(),
        )

    def _check_user(self, args: tuple[str, ...]) -> None:
        if self.user is not None:
            try:
                entry = pwd.getpwnam(self.user)
            except KeyError:
                raise ExecutorUnavailable(f"JERP_BENCH_USER={self.user!r}: no such user", user=self.user) from None
            if os.geteuid() not in (0, entry.pw_uid):
                raise ExecutorUnavailable(
                    f"JERP_BENCH_USER={self.user!r}: the worker runs as uid {os.geteuid()} and cannot run commands "
                    "as another user; run the worker as root, or as that user and leave JERP_BENCH_USER unset",
                    user=self.user,
                )
            return
        if os.geteuid() != 0 or not self.bench_program or self._frappe_user():
            return
        # Every command is refused, not only those that start with bench: the workflows run bench
        # inside a fence (``flock … bench …``), and the commands around it (the probe of a Frappe
        # lock) would leave root-owned files in the bench that Frappe, as its user, cannot open.
        raise CommandRefused(
            f"this worker runs as root and bench refuses to run as root ('You should not run this command "
            f"as root'): run the worker as the bench's user (the owner of {self.bench_dir}), or set "
            "JERP_BENCH_USER to that user, or set frappe_user in sites/common_site_config.json; "
            f"not running {describe_argv(args)}",
            program=_program(args),
        )

    def _frappe_user(self) -> str | None:
        try:
            config = json.loads((self.bench_dir / "sites" / "common_site_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        user = config.get("frappe_user") if isinstance(config, dict) else None
        return user if isinstance(user, str) and user else None

    def _run_as(self) -> str | None:
        """The user every command runs as: ``user``; else, for a worker running as root, the
        bench's ``frappe_user`` (bench would become that user anyway, and the other commands a
        workflow runs in the bench folder, such as the probe of a Frappe lock, must not create
        files there that the bench's user cannot open); else None (the worker's own user)."""
        if self.user is not None:
            return self.user
        if os.geteuid() != 0:
            return None
        named = self._frappe_user()
        if named is None:
            return None
        try:
            entry = pwd.getpwnam(named)
        except KeyError:
            raise ExecutorUnavailable(
                f"frappe_user {named!r} in sites/common_site_config.json is not a user of this machine",
                user=named,
            ) from None
        return None if entry.pw_uid == 0 else entry.pw_name

    def _identity(self) -> dict[str, object]:
        """``Popen`` arguments that make a command run as :meth:`_run_as`."""
        user = self._run_as()
        if user is None:
            return {}
        entry = pwd.getpwnam(user)
        if entry.pw_uid == os.geteuid():
            return {}
        return {"user": entry.pw_uid, "group": entry.pw_gid,
                "extra_groups": os.getgrouplist(entry.pw_name, entry.pw_gid)}

    def _user_env(self) -> dict[str, str]:
        user = self._run_as()
        if user is None:
            return {}
        entry = pwd.getpwnam(user)
        return {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}

    def _spawn(self, args: tuple[str, ...], *, with_stdin: bool) -> subprocess.Popen[bytes]:
        env = child_environment({**self._user_env(), **self.env}, self.pass_env)
        try:
            return subprocess.Popen(  # type: ignore[call-overload]
                args,
                cwd=self.bench_dir,
                env=env,
                stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                bufsize=0,
                start_new_session=True,
                close_fds=True,
                **self._identity(),
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
        fence: Path | None = None,
    ) -> None:
        """SIGTERM the command's process group and the holders of ``fence``, SIGKILL them after
        the grace, reap the leader; return once none is left (or a further grace has passed)."""
        pgid = proc.pid

        def holders() -> list[int]:
            return _holders(fence) if fence is not None else []

        def alive() -> bool:
            return _group_alive(pgid) or bool(holders())

        _signal_group(pgid, signal.SIGTERM)
        _signal_pids(holders(), signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        while time.monotonic() < deadline:
            self._drain(proc, selector, tail, wait=_POLL_S)
            proc.poll()
            if not alive():
                break
        else:
            _signal_group(pgid, signal.SIGKILL)
            _signal_pids(holders(), signal.SIGKILL)
        proc.wait()
        # Members of the group that were re-parented are reaped by their new parent; give
        # that a moment so the caller sees the group gone. A holder that appeared meanwhile
        # (forked by one being killed) is killed as well.
        settle = time.monotonic() + self.kill_grace
        while alive() and time.monotonic() < settle:
            _signal_pids(holders(), signal.SIGKILL)
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


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    """Write ``data`` to the command's stdin and close it. The data is small (STDIN_MAX, under
    the pipe's capacity), so the write does not wait on the command; a command that exited
    or closed its stdin first simply does not get it."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        try:
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass


def _holders(path: Path) -> list[int]:
    """Pids of the processes (that this process may inspect) holding ``path`` open."""
    try:
        target = os.stat(path)
    except OSError:
        return []
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if st.st_ino == target.st_ino and st.st_dev == target.st_dev:
                found.append(int(entry))
                break
    return found


def _signal_holders(path: Path, sig: signal.Signals) -> None:
    _signal_pids(_holders(path), sig)


def _signal_pids(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


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
