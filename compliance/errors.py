"""One exception tree for the whole project.

Every error the system raises on purpose derives from `ComplianceError`, and is either
`RetryableError` (the step may succeed later: retry with backoff) or `TerminalError`
(retrying cannot help: an operator must act). Adapters translate library errors
(boto3, psycopg, smtplib, redis) at their edge with ``raise X from exc``.

Messages are one line, say what is wrong and how to fix it, and never contain personal
data: identities appear only as pseudonyms.
"""

from __future__ import annotations


class ComplianceError(Exception):
    """Root of every error raised on purpose by `gdpr`."""


class RetryableError(ComplianceError):
    """A transient failure (connection reset, timeout, 5xx): retry later with backoff."""


class TerminalError(ComplianceError):
    """A failure that retrying cannot fix: bad input, bad configuration, a broken invariant."""


# --- terminal -------------------------------------------------------------------------


class ConfigError(TerminalError):
    """Settings are missing, unknown or malformed; raised at startup."""


class ManifestError(ConfigError):
    """The sources manifest is invalid (unknown kind, table, column, duplicate name...).

    One error may carry several problems (`problems`, in manifest order): the loader
    reports every mistake at once, so a manifest is fixed in one pass, not one by one.
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)

    @classmethod
    def of(cls, errors: list[ManifestError]) -> ManifestError:
        """One error for all of `errors` (each possibly holding several), in order."""
        problems = tuple(p for e in errors for p in e.problems)
        if len(problems) == 1:
            return cls(problems[0])
        listed = " | ".join(problems)
        return cls(f"{len(problems)} problems in the sources manifest: {listed}", problems)


class ValidationError(TerminalError):
    """User input is malformed (an email, an identity type, a duration...)."""


class NotFoundError(TerminalError):
    """A referenced object (request, link, hold, package) does not exist."""


class StateError(TerminalError):
    """Not allowed in the object's current state (a finished request extended, an export
    that has no package yet): wait for another state, or act on another object."""


class IllegalTransitionError(StateError):
    """A request state change that the lifecycle table does not allow."""


class PermissionDeniedError(TerminalError):
    """The operator may not do this (e.g. approving their own erasure request)."""


class LegalHoldError(TerminalError):
    """The data is under a legal hold and must not be erased or purged."""


class ResidualDataError(TerminalError):
    """Verification found personal data left behind after an erasure."""


class IntegrityError(TerminalError):
    """Encrypted data, an audit chain or a package failed an integrity check."""


class TokenError(TerminalError):
    """A download token is unknown, expired, revoked or used up (deliberately vague)."""


class SourceRefusedError(TerminalError):
    """A data source refused a request for good (access denied, bucket missing, a 4xx
    from an API): fix its configuration or grant access, then retry the request."""


class MailRefusedError(TerminalError):
    """The mail server refused a message for good (e.g. it cannot carry an internationalised
    address); the subject must be reached another way."""


class StorageAccessError(TerminalError):
    """Object storage refused permanently (access denied, no such bucket, bad credentials)."""


class UnsupportedError(TerminalError):
    """The source or backend cannot perform this action (e.g. cyclic references it refuses)."""


# --- retryable ------------------------------------------------------------------------


class SourceUnavailableError(RetryableError):
    """A data source (database, Redis, HTTP API) could not be reached or timed out."""


class StorageUnavailableError(RetryableError):
    """Object storage could not be reached or answered with a server error."""


class KeyServiceUnavailableError(RetryableError):
    """The key service (AWS KMS) could not be reached, throttled or had a server error."""


class MailUnavailableError(RetryableError):
    """The SMTP server could not be reached or refused temporarily."""


class ChannelUnavailableError(RetryableError):
    """An alert channel (the SMTP server, the webhook) did not take an alert; the alert
    stays pending and the next check sends it again."""


class LeaseHeldError(RetryableError):
    """Another worker holds the lease for this work; try again later."""
