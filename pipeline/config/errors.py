"""The errors a user may meet. Each says what is wrong and where (file, key or path); no traceback."""

from __future__ import annotations

import sys
from dataclasses import dataclass


class PipelineError(Exception):
    """A user-facing failure: bad data, a missing file, an impossible setting. Exit status 2."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the params file, located by its dotted key (the loader adds line/col)."""

    key: str
    message: str
    line: int | None = None
    column: int | None = None

    def format(self, filename: str) -> str:
        """``params.yaml:LINE:COL: dotted.key: what is wrong`` (the form editors and CI annotate)."""
        where = filename if self.line is None else f"{filename}:{self.line}:{self.column}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ComponentError(PipelineError):
    """A declared component (loss, optimizer, scheduler, augmenter, model) cannot be built or run as
    declared. Raised by the builders the stages use; ``validate`` runs the same builders on tiny
    stand-ins and reports each problem at its key."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{p.key}: {p.message}" if p.key else p.message for p in problems))

    @classmethod
    def at(cls, key: str, message: str) -> ComponentError:
        return cls([Problem(key, message)])


class ConfigError(PipelineError):
    """The params file is invalid; carries every problem found, not just the first."""

    def __init__(self, filename: str, problems: list[Problem]):
        self.filename = filename
        self.problems = problems
        super().__init__("\n".join(p.format(filename) for p in problems))


def report(exc: PipelineError, prog: str) -> int:
    """Print a user-facing failure for ``prog`` (a stage or the CLI) on stderr, no traceback; return
    the exit status (2). A :class:`ConfigError` lists every problem, then a count."""
    if isinstance(exc, ConfigError):
        print(exc, file=sys.stderr)
        print(f"{prog}: {exc.filename} is invalid ({len(exc.problems)} problem(s)); nothing was run", file=sys.stderr)
    else:
        print(f"{prog}: error: {_without_worker_traceback(str(exc))}", file=sys.stderr)
    return 2


def _without_worker_traceback(message: str) -> str:
    """A failure in a DataLoader worker comes back as "Caught X in DataLoader worker process N.
    Original Traceback ...: X: <message>"; the user needs the message (it names the file and why)."""
    if message.startswith("Caught ") and "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message
