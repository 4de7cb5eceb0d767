"""The one exception type for user-facing failures.

Every problem a user can fix (a typo in a config, a malformed file, a missing image) raises
:class:`RablipError` with a message that says what was wrong, where, and what to do. Entry
points catch it, print the message and exit with :data:`EXIT_USER_ERROR` (2), without a
traceback unless ``--debug`` is given.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class RablipError(Exception):
    """A failure caused by user input: config, data files, checkpoints, indexes."""


class ConfigError(RablipError):
    """A config file or override that does not fit the schema."""


class DataError(RablipError):
    """A data file (annotations, knowledge base, images, predictions) that cannot be read."""
