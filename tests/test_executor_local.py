"""LocalExecutor against real subprocesses."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from jerp_jobs.errors import CommandTimeout, ExecutorUnavailable
from jerp_jobs.executors import CommandResult, LocalExecutor
from jerp_jobs.executors.base import TAIL_LINES
from jerp_jobs.executors.local import CHILD_ENV

PY = sys.executable


def py(code: str, *args: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code), *args]


def _live_processes() -> dict[int, tuple[int, str]]:
    """pid -> (process group, state) for every process that is not a zombie."""
    found: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if state not in ("Z", "X"):
            found[int(entry)] = (pgrp, state)
    return found


def assert_gone(pids: list[int], pgid: int) -> None:
    live = _live_processes()
    survivors = [pid for pid in pids if pid in live]
    group = [pid for pid, (pgrp, _) in live.items() if pgrp == pgid]
    assert not survivors, f"processes survived the timeout: {survivors}"
    assert not group, f"process group {pgid} still has members: {group}"


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    """An empty folder standing for the bench the commands run in."""
    path = tmp_path / "frappe-bench"
    path.mkdir()
    return path


@pytest.fixture
def executor(bench_dir: Path) -> LocalExecutor:
    """A LocalExecutor with a short kill grace, so timeout tests stay quick."""
    return LocalExecutor(bench_dir, kill_grace=1.0)


@pytest.mark.parametrize("code", [0, 3], ids=["success", "exit-3"])
def test_exit_code_is_reported_not_raised(executor: LocalExecutor, code: int) -> None:
    result = executor.run(py(f"import sys; print('bye'); sys.exit({code})"), timeout=30)

    assert isinstance(result, CommandResult)
    assert result.exit_code == code
    assert result.ok is (code == 0)
    assert result.output == "bye"
    assert result.argv[0] == PY
    assert result.duration_s > 0


def test_process_killed_by_signal_reports_128_plus_signal(executor: LocalExecutor) -> None:
    result = executor.run(py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), timeout=30)

    assert result.exit_code == 137


def test_runs_in_the_bench_folder_with_extra_env(bench_dir: Path) -> None:
    executor = LocalExecutor(bench_dir, env={"JERP_PROBE": "present"})

    result = executor.run(py("import os; print(os.getcwd()); print(os.environ['JERP_PROBE'])"), timeout=30)

    assert result.output.splitlines() == [str(bench_dir), "present"]


def test_output_reaches_the_callback_while_the_command_still_runs(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    marker = tmp_path / "callback-saw-first-line"
    code = """
        import os, sys, time
        print("first", flush=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("marker seen" if os.path.exists(sys.argv[1]) else "marker missing", flush=True)
    """
    seen: list[str] = []

    def on_output(line: str) -> None:
        seen.append(line)
        if line == "first":
            marker.touch()

    result = executor.run(py(code, str(marker)), timeout=60, on_output=on_output)

    assert seen == ["first", "marker seen"]
    assert result.exit_code == 0


def test_stdout_and_stderr_are_interleaved_in_order(executor: LocalExecutor) -> None:
    code = """
        import sys
        for i in range(40):
            stream = sys.stderr if i % 2 else sys.stdout
            print(f"line {i}", file=stream, flush=True)
    """
    seen: list[str] = []

    result = executor.run(py(code), timeout=30, on_output=seen.append)

    expected = [f"line {i}" for i in range(40)]
    assert seen == expected
    assert result.output.splitlines() == expected


def test_tail_is_bounded_but_callback_sees_everything(executor: LocalExecutor) -> None:
    seen: list[str] = []

    result = executor.run(
        py("for i in range(5000): print(f'row {i}')"), timeout=60, on_output=seen.append
    )

    assert len(seen) == 5000
    assert result.output.splitlines() == [f"row {i}" for i in range(5000 - TAIL_LINES, 5000)]


def test_a_last_line_without_newline_is_kept(executor: LocalExecutor) -> None:
    seen: list[str] = []

    result = executor.run(py("import sys; sys.stdout.write('a\\nno newline')"), timeout=30, on_output=seen.append)

    assert seen == ["a", "no newline"]
    assert result.output == "a\nno newline"


def test_stdin_is_closed(executor: LocalExecutor) -> None:
    result = executor.run(py("import sys; print(repr(sys.stdin.read()))"), timeout=30)

    assert result.exit_code == 0
    assert result.output == "''"


def test_password_prompt_gets_eof_instead_of_hanging(executor: LocalExecutor) -> None:
    code = """
        try:
            input("MySQL root password: ")
        except EOFError:
            print("\\nno terminal")
            raise SystemExit(1)
    """
    result = executor.run(py(code), timeout=30)

    assert result.exit_code == 1
    assert "no terminal" in result.output


def test_hung_command_is_killed_at_its_timeout(executor: LocalExecutor) -> None:
    code = """
        import os
        print(os.getpid(), os.getpgrp(), flush=True)
        os.execvp("sleep", ["sleep", "300"])
    """
    with pytest.raises(CommandTimeout) as caught:
        executor.run(py(code), timeout=1)

    pid, pgid = map(int, caught.value.output_tail.split())
    assert pid == pgid, "the command must lead a process group of its own"
    assert caught.value.timeout == 1
    assert "timeout of 1s" in str(caught.value)
    assert_gone([pid], pgid)


def test_child_ignoring_sigterm_is_killed_after_the_grace(executor: LocalExecutor) -> None:
    code = """
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        print(os.getpid(), child.pid, os.getpgrp(), flush=True)
        time.sleep(300)
    """
    with pytest.raises(CommandTimeout) as caught:
        executor.run(py(code), timeout=1)

    parent, child, pgid = map(int, caught.value.output_tail.split())
    assert_gone([parent, child], pgid)


def test_grandchild_left_behind_after_sigterm_is_killed(executor: LocalExecutor) -> None:
    code = """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
        print(os.getpid(), child.pid, os.getpgrp(), flush=True)
        time.sleep(300)
    """
    with pytest.raises(CommandTimeout) as caught:
        executor.run(py(code), timeout=1)

    parent, child, pgid = map(int, caught.value.output_tail.split())
    assert_gone([parent, child], pgid)


def test_timeout_message_hides_secret_options(executor: LocalExecutor) -> None:
    argv = py("import time; time.sleep(300)", "--db-root-password", "hunter2", "--admin-password=s3cret")

    with pytest.raises(CommandTimeout) as caught:
        executor.run(argv, timeout=0.5)

    message = str(caught.value)
    assert "hunter2" not in message and "s3cret" not in message
    assert "--db-root-password '***'" in message or "--db-root-password ***" in message


def test_command_exiting_while_a_background_child_holds_the_pipe_returns(
    executor: LocalExecutor,
) -> None:
    code = """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        print("parent done", flush=True)
    """
    result = executor.run(py(code), timeout=60)

    assert result.exit_code == 0
    assert result.output == "parent done"


def test_missing_bench_folder_is_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bench"

    with pytest.raises(ExecutorUnavailable, match="no-such-bench"):
        LocalExecutor(missing).run(["true"], timeout=10)


def test_missing_program_is_unavailable(executor: LocalExecutor) -> None:
    with pytest.raises(ExecutorUnavailable, match="no-such-program-xyz"):
        executor.run(["no-such-program-xyz", "--help"], timeout=10)


def test_program_that_is_not_executable_is_unavailable(executor: LocalExecutor, bench_dir: Path) -> None:
    script = bench_dir / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)

    with pytest.raises(ExecutorUnavailable, match="not-executable"):
        executor.run([str(script)], timeout=10)


@pytest.mark.parametrize(
    "argv, error",
    [
        pytest.param("bench --site all migrate", TypeError, id="shell-string"),
        pytest.param(b"bench", TypeError, id="bytes"),
        pytest.param([], ValueError, id="empty"),
        pytest.param(["bench", 3], TypeError, id="non-str-item"),
        pytest.param(("bench", None), TypeError, id="none-item"),
    ],
)
def test_bad_argv_is_refused(executor: LocalExecutor, argv: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        executor.run(argv, timeout=10)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
def test_bad_timeout_is_refused(executor: LocalExecutor, timeout: float) -> None:
    with pytest.raises(ValueError):
        executor.run(["true"], timeout=timeout)


def test_standin_bench_reports_an_unknown_site(tmp_path: Path) -> None:
    from tests.standin.layout import BENCH_SCRIPT, create_bench

    bench = create_bench(tmp_path / "frappe-bench", db_host="127.0.0.1", db_port=3306)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bench").write_text(f'#!/bin/sh\nexec "{PY}" "{BENCH_SCRIPT}" "$@"\n')
    (bin_dir / "bench").chmod(0o755)
    executor = LocalExecutor(bench, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})

    result = executor.run(["bench", "--site", "nosuch.example.com", "migrate"], timeout=60)

    assert result.exit_code == 1
    assert "Site nosuch.example.com does not exist!" in result.output


SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "aws-s3cr3t-value",
    "NPM_SECRET": "npm-s3cr3t-value",
    "JERP_WEBHOOK_SECRET": "hook-s3cr3t-value",
    "MARIADB_ROOT_PASSWORD": "root-s3cr3t-value",
    "FRAPPE_ADMIN_PASSWORD": "admin-s3cr3t-value",
}


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_a_child_process_gets_only_the_allowlisted_environment(
    bench_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_TIME", "C.UTF-8")
    monkeypatch.setenv("OPERATOR_EXTRA", "wanted")
    executor = LocalExecutor(bench_dir, env={"JERP_PROBE": "present"}, pass_env=["OPERATOR_EXTRA"])
    seen: dict[str, str] = {}

    def on_output(line: str) -> None:
        if line.startswith("pid "):  # read the live child's environment from outside, while it runs
            seen.update(_environ_of(int(line.split()[1])))

    result = executor.run(py("import os, sys, time; print('pid', os.getpid(), flush=True); time.sleep(1)"),
                          timeout=30, on_output=on_output)
    assert result.ok and seen
    assert not set(SECRETS) & set(seen), "secret variables reached the child"
    assert not any(value in "\0".join(seen.values()) for value in SECRETS.values())
    assert seen["PATH"] == os.environ["PATH"] and seen["LC_TIME"] == "C.UTF-8"
    assert seen["JERP_PROBE"] == "present" and seen["OPERATOR_EXTRA"] == "wanted"
    allowed = {*CHILD_ENV, "JERP_PROBE", "OPERATOR_EXTRA"} | {k for k in os.environ if k.startswith("LC_")}
    assert set(seen) <= allowed


def test_stdin_bytes_reach_the_command_then_end_of_file(executor: LocalExecutor) -> None:
    code = "import sys; a = sys.stdin.readline(); b = sys.stdin.readline(); rest = sys.stdin.read(); " \
           "print(repr(a), repr(b), repr(rest))"
    fed = executor.run(py(code), timeout=30, stdin=b"first\nsecond\n")
    assert fed.output == "'first\\n' 'second\\n' ''"
    closed = executor.run(py(code), timeout=30)
    assert closed.output == "'' '' ''"


def test_stdin_must_be_small_bytes(executor: LocalExecutor) -> None:
    with pytest.raises(TypeError):
        executor.run(["true"], timeout=5, stdin="text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most"):
        executor.run(["true"], timeout=5, stdin=b"x" * 5000)
