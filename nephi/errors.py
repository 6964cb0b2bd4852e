"""The one exception type for problems a user can fix (bad file, bad option, bad config key).

Entry points print its message as one line and exit with status 2; no traceback.
"""


class NephiInputError(Exception):
    """A user-facing input problem; the message names the file, option or key and the problem."""


EXIT_INPUT_ERROR = 2
