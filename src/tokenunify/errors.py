"""Errors that the CLI turns into one clear line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class TokenUnifyError(Exception):
    """Base class for errors that describe a user problem, not a bug."""


class LocatedError(TokenUnifyError):
    """A user error about one place (a file, dataset or folder): ``"<where>: <problem>"``."""

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # rebuilt from both arguments, so the error survives the trip back from a worker process
        return type(self), (self.where, self.problem)


class InputError(LocatedError):
    """Bad input: a missing file, a wrong shape, a bad dtype, NaN, ...

    The message always names the file (and dataset) and the problem, so the CLI
    can print it as a single line.
    """


class OutputError(LocatedError):
    """An output that exists (without --overwrite) or cannot be written."""


class ConfigError(TokenUnifyError):
    """A config file or a key=value override that is wrong."""
