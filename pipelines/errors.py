"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""


class NeedsegError(Exception):
    """Something the user can fix: bad input, bad configuration, a missing prerequisite."""

    exit_code = 1


class InputError(NeedsegError):
    """A landing file or batch that cannot be loaded; the message names file, row and column."""

    exit_code = 3


class ConfigError(NeedsegError):
    """A configuration file (mapping, taxonomy, settings) that is wrong."""

    exit_code = 2
