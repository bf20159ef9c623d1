"""The error types the domain and configuration layers raise on purpose.

Anything else escaping from our code is a bug: the server answers ``on_error`` for it and the
command line prints a traceback-free message and exits with a non-zero status.
"""

from __future__ import annotations


class PolicydError(Exception):
    """Base class for errors m365-policyd reports to the administrator."""


class ConfigError(PolicydError):
    """A configuration or input file is unreadable or invalid (exit status 78).

    ``str()`` is one line naming the file, the key and what to do about it.
    """

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")


class LookupFailureError(PolicydError):
    """A Postfix table could not answer (``postmap -q`` failed or timed out).

    The daemon answers ``on_error`` for the request: we report, never guess.
    """


class AliasLookupError(LookupFailureError):
    """A recipient could not be expanded: a table failed, or Postfix's limits were hit.

    Postfix itself defers such a message ("4.6.0 Alias expansion error"), so we report the
    problem instead of guessing a prediction.
    """


class RouteLookupError(LookupFailureError):
    """A table that decides the route (``transport_maps``, ``sender_dependent_*``, a domain
    list) failed: trivial-rewrite(8) itself defers such mail ("lookup failure")."""


class RewriteLookupError(LookupFailureError):
    """A table that rewrites the envelope sender (``sender_canonical_maps``, ``canonical_maps``,
    ``smtp_generic_maps``, a rewriting service such as postsrsd) failed: cleanup(8) does not
    accept such mail ("map lookup problem") and smtp(8) defers it."""
