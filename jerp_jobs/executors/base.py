"""The executor interface: run one argv where the bench lives, and report what happened.

An executor knows nothing of Frappe. It runs an argv list (never a shell string) with a
timeout and no TTY, streams the output to ``on_output`` line by line as it comes, and returns
a :class:`CommandResult` with the exit code, the duration and the last lines of output.

- ``stdin``: bytes written to the command's standard input, which is then closed (end of
  file); without it stdin is closed from the start. This is how answers to a prompt (a
  password) reach a command without appearing in any argv or environment.
- ``holders_of``: a file, relative to the working folder, that belongs to the command (its
  fence lock file). On timeout, every process that still has it open is killed with the
  command's process group, including processes that left the group or the session
  (``setsid``), so nothing the command started keeps the fence.

A command that outlives its timeout is killed (its whole process tree and the holders above)
and reported as :class:`~jerp_jobs.errors.CommandTimeout`; a place that cannot run commands at
all (container missing, stopped, restarting) is an :class:`~jerp_jobs.errors.ExecutorError`.
A non-zero exit is *not* an exception here: callers decide what it means.
"""

from __future__ import annotations

import codecs
import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

OutputCallback = Callable[[str], None]

#: How many lines of output a result keeps.
TAIL_LINES = 200

#: The most bytes ``stdin`` may carry: answers to prompts, written in one go.
STDIN_MAX = 4096


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_code: int
    duration_s: float
    output: str  # the last TAIL_LINES lines, stdout and stderr interleaved as they came

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Executor(Protocol):
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
        holders_of: str | None = None,
    ) -> CommandResult: ...


class OutputTail:
    """Collects output chunks into lines: hands each full line to a callback, keeps the tail.

    A carriage return redraws its line on a terminal (progress bars: Frappe's new-site and
    migrate print one line of thousands of redraws). Each line keeps what a person would see
    last: the text after its last ``\r`` that is followed by text. So the tail holds lines,
    not one redraw series, and an unfinished line in a stream of redraws stays small.
    """

    def __init__(self, on_output: OutputCallback | None, max_lines: int = TAIL_LINES) -> None:
        self._on_output = on_output
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes | str) -> None:
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        text = self._partial + text.replace("\r\n", "\n")
        *complete, partial = text.split("\n")
        self._partial = _redrawn(partial, keep_trailing=True)
        for line in complete:
            self._emit(_redrawn(line))

    def close(self) -> None:
        self._partial += self._decoder.decode(b"", final=True)
        if self._partial:
            self._emit(_redrawn(self._partial))
            self._partial = ""

    def text(self) -> str:
        return "\n".join(self._lines)

    def _emit(self, line: str) -> None:
        self._lines.append(line)
        if self._on_output is not None:
            self._on_output(line)


def _redrawn(line: str, *, keep_trailing: bool = False) -> str:
    """What remains visible of a line redrawn with carriage returns: the text after the last
    ``\r`` that has text after it. ``keep_trailing``: an unfinished line keeps its trailing
    ``\r`` (the next chunk's text replaces the current one)."""
    if "\r" not in line:
        return line
    body = line.rstrip("\r")
    trailing = line[len(body):] if keep_trailing else ""
    return body[body.rfind("\r") + 1:] + trailing
