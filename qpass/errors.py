"""Error types: every user-facing failure is a `QpassError` with one clear paragraph.

The CLI prints `str(error)` and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class QpassError(Exception):
    """Base of all errors a user can cause; the message says what is wrong and how to fix it."""

    exit_code = 1


class IRError(QpassError):
    """A graph is malformed: a type mismatch, a dangling value, a bad annotation."""


class ParseError(QpassError):
    """A `.qir` text or a pipeline string does not parse; the message shows line and column."""

    def __init__(self, message: str, text: str = "", pos: int | None = None, source: str = "<text>"):
        self.line = self.column = None
        if pos is not None:
            self.line = text.count("\n", 0, pos) + 1
            self.column = pos - (text.rfind("\n", 0, pos) + 1) + 1
            lines = text.split("\n")
            line_text = lines[self.line - 1] if self.line <= len(lines) else ""
            message = (f"{source}:{self.line}:{self.column}: {message}\n"
                       f"  {line_text}\n  {' ' * (self.column - 1)}^")
        super().__init__(message)


class FrontendError(QpassError):
    """An input model cannot be imported (unreadable file, unsupported ops, dynamic shapes)."""


class PassError(QpassError):
    """A pass failed, or a pass name or option is wrong."""


class InterpreterError(QpassError):
    """The reference interpreter cannot execute a graph with the given inputs."""
