"""Problems found in mapping files and the errors the engine raises."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One mistake in a mapping file, printed as `FILE:LINE: FIELD: message`."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class MappingError(Exception):
    """The mappings are invalid; `problems` lists every mistake found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(f"{len(problems)} problem(s) in mapping files:\n{lines}")


class PayloadError(ValueError):
    """A case cannot be turned into a department payload (e.g. a required field is empty)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnmappedStatus(LookupError):
    """A department sent a status code its mapping does not declare. Never defaulted."""

    def __init__(self, department: str, code: str) -> None:
        super().__init__(f"department {department!r} sent unmapped status {code!r}")
        self.department = department
        self.code = code
