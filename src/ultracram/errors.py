"""The base of every error ultracram raises for bad input. The CLI prints these as one clear
message (no traceback); anything else is a bug and keeps its traceback."""


class UltracramError(Exception):
    """Bad input or state that the user can fix; the message names the problem."""


class DataError(UltracramError, ValueError):
    """Bad pretraining data: the message names the file (and line / byte offset) and the problem."""


class RunMismatchError(UltracramError, ValueError):
    """A directory holds a different run (other settings) than the one asked for; the message
    names the record file, every differing setting, and what to do."""
