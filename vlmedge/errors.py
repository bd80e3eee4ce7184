"""User-facing errors.

Anything the user can fix (bad input, a missing file, an unknown name) raises a subclass of `VlmedgeError`
with a one-line message that says what was expected; the CLI prints that line and exits non-zero without a
traceback. Anything else is a bug and keeps its traceback.
"""


class VlmedgeError(Exception):
    """An error the user can fix; its message is one line naming what was expected."""


class InputError(VlmedgeError, ValueError):
    """A frame, audio chunk, question or setting that does not have the expected shape, type or range."""


class UnknownNameError(VlmedgeError, KeyError):
    """An unknown method, model family, backend or setting name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelFileError(VlmedgeError, FileNotFoundError):
    """A model directory with missing, unreadable or mismatched files."""
