"""Errors a user can cause; the CLI prints their message as one line instead of a traceback."""


class UserError(Exception):
    """Bad path, bad config, missing weights: something the user fixes, told in one line."""
