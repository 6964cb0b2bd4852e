"""The one exception type for problems a user can fix (bad file, bad option, bad config key).

Entry points print its message as one line and exit with status 2; no traceback.
"""


class NephiInputError(Exception):
    """A user-facing input problem; the message names the file, option or key and the problem."""


EXIT_INPUT_ERROR = 2


def short_reason(exc: BaseException) -> str:
    """The first line of an exception's message (at most 160 characters), or its type's name:
    the reason part of a one-line input error."""
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
