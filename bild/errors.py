"""The one exception type users see.

Every error a user can cause (bad paths, bad parameters, mismatched models, unreachable hub)
is raised as `BildError` with a one-line message that says what to do. The CLI prints it
without a traceback; library users can catch it.
"""


class BildError(Exception):
    """A user-facing error with a one-line, actionable message."""
