"""One exception type for every problem the user can fix (bad config, bad row, missing file).

The CLI prints it as a single line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class PrideError(Exception):
    """A user-facing error: the message names the file, the row or line, and the field."""
