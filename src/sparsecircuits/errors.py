"""The one exception type for user mistakes: the CLI prints it as a single line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (a path, a name, a value). Never raised for a bug in our own code."""
