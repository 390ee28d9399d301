"""Errors that describe the user's input, not a bug in xpcnn.

Raised at the boundary (files, options, hyperparameters, backends). The CLI prints
exactly these as one line and exits 2; every other exception is a bug and shows its
traceback (``xpcnn --debug`` shows one for these too). Each also subclasses the
built-in a Python caller expects, so ``except ValueError`` keeps working.
"""


class InputError(Exception):
    """Bad input a user can fix: the message names the option, file or value."""


class InputValueError(InputError, ValueError):
    """A value, file content or option that is out of range or malformed."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type."""
