"""User-facing errors: one line saying what is wrong, where, and how to fix it."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad recipe, missing file, bad data).

    The command line prints it as one line and exits with code 2, never a traceback.
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None) -> None:
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.line())

    def line(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"(in {self.where})")
        text = " ".join(parts)
        if self.fix:
            text += f"; {self.fix}"
        return text


class TrainingError(UserError):
    """Training cannot go on (NaN/inf loss, diverged run); the run stays resumable."""
