"""Errors that are the user's to fix: the CLI prints them as one clear line, never a traceback."""


class UserError(Exception):
    """A mistake in the user's input (config, data, files): what went wrong, where, how to fix it."""


class DatasetError(UserError):
    """A malformed dataset description; the message names the file and line."""

    def __init__(self, path, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class StageFailed(Exception):
    """A stage ran to its end but its outcome is a failure (e.g. too many videos failed).

    Its per-item records are kept on disk; the stage's manifest is not written, so the
    stage is re-run next time. The CLI prints the message and exits non-zero.
    """
