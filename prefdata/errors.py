"""Typed errors. Every user-facing failure is a PrefdataError: the CLI prints its one-line
message and exits 2; anything else is a bug and keeps its traceback."""
from __future__ import annotations


class PrefdataError(Exception):
    """Base for user errors (bad input, bad recipe, missing dataset)."""


class DatasetNotFound(PrefdataError):
    def __init__(self, name: str, catalog: str | None = None):
        where = f" in catalog {catalog}" if catalog else ""
        super().__init__(f"dataset {name!r} not found{where}")
        self.name = name


class VersionNotFound(PrefdataError):
    def __init__(self, name: str, version: object, available: list[int] | None = None):
        hint = f" (available: {available[0]}..{available[-1]})" if available else ""
        super().__init__(f"dataset {name!r} has no version or tag {version!r}{hint}")
        self.name, self.version = name, version


class SchemaError(PrefdataError):
    """A column is missing, mistyped or holds an invalid value. Names the column, the expected
    type and, where it applies, the first offending row."""

    def __init__(self, message: str, *, column: str | None = None, expected: str | None = None,
                 row: int | None = None, source: str | None = None):
        parts = [message]
        if source:
            parts.insert(0, f"{source}:")
        if row is not None:
            parts.append(f"(first offending row {row})")
        super().__init__(" ".join(parts))
        self.column, self.expected, self.row, self.source = column, expected, row, source


class IngestError(PrefdataError):
    """Input file cannot be read as the requested format; names file, row (1-based line) and column."""

    def __init__(self, path: str, message: str, *, row: int | None = None, column: str | None = None):
        loc = str(path)
        if row is not None:
            loc += f":{row}"
        if column is not None:
            loc += f" column {column!r}"
        super().__init__(f"{loc}: {message}")
        self.path, self.row, self.column = str(path), row, column


class FormatError(PrefdataError):
    """Unknown or ambiguous input format."""


class CommitConflict(PrefdataError):
    def __init__(self, name: str, message: str = "concurrent commit conflict; retries exhausted"):
        super().__init__(f"dataset {name!r}: {message}")
        self.name = name


class RecipeError(PrefdataError):
    """A recipe is invalid. `path` is the YAML path, e.g. steps[1].pairs.min_margin."""

    def __init__(self, message: str, *, path: str | None = None, file: str | None = None):
        loc = ""
        if file:
            loc = f"{file}: "
        if path:
            loc += f"{path}: "
        super().__init__(f"{loc}{message}")
        self.path, self.file = path, file


class RecipeProblems(RecipeError):
    """Every problem found in one recipe, reported together: one line each, `YAML path: what is wrong`
    (the CLI prints all the lines; a single problem reads like a plain RecipeError)."""

    def __init__(self, problems: list[tuple[str | None, str]], *, file: str | None = None):
        if len(problems) == 1:
            (path, message), = problems
            super().__init__(message, path=path, file=file)
        else:
            lines = "".join(f"\n  {p}: {m}" if p else f"\n  {m}" for p, m in problems)
            super().__init__(f"{len(problems)} problems (nothing was read or run):{lines}", file=file)
        self.problems = list(problems)


class ReadOnlyQuery(PrefdataError):
    """`prefdata sql` only runs read-only statements."""


class SandboxError(PrefdataError):
    """The code sandbox could not be set up."""
