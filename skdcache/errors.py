"""One exception type for every user-facing error: the CLI prints its message as one line."""


class SkdError(Exception):
    """A problem with the user's input or environment; the message names the fix."""


class CacheError(SkdError):
    """A cache is missing, incomplete, damaged, or does not match the data it is asked for."""


class GroupIncomplete(CacheError):
    """A teacher cache group exists but has no manifest yet: its creation was cut short, so it can be recreated."""
