"""The one exception type stages turn into a clear one-line message (see cli.run_stage)."""


class CxrltError(Exception):
    """A problem the user can fix (bad input, missing file, inconsistent recipe).

    The message is a single line naming the file, row or column at fault.
    """
