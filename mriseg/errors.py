"""The one exception type mriseg raises for input a person supplied."""


class InputError(ValueError):
    """A file or value that mriseg cannot use; the message says what is wrong and how to fix it."""
