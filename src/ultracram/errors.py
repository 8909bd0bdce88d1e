"""The base of every error ultracram raises for bad input. The CLI prints these as one clear
message (no traceback); anything else is a bug and keeps its traceback."""


class UltracramError(Exception):
    """Bad input or state that the user can fix; the message names the problem."""
