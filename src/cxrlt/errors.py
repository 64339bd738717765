"""The one exception type stages turn into a clear one-line message (see cli.run_stage)."""


class CxrltError(Exception):
    """A problem the user can fix (bad input, missing file, inconsistent recipe).

    The message is a single line naming the file, row or column at fault.
    """


QUOTE_LIMIT = 200  # characters: the most of a user's text (an id, a header, a path) an error message quotes


def clip(text, limit: int = QUOTE_LIMIT) -> str:
    """`text` as an error message quotes it: at most `limit` characters, the cut said."""
    s = str(text)
    return s if len(s) <= limit else f"{s[:limit]}... ({len(s)} characters)"
