"""The one exception type that the CLI turns into a one-line message.

Raise :class:`LaminaError` for anything a user can fix (a bad config key, a
missing corpus, a corrupt checkpoint): the message must name the problem and
say what to do. Anything else is a bug and keeps its traceback.
"""


class LaminaError(Exception):
    """A user-facing error: its message is printed alone, without a traceback."""
