"""Why an enrollment is refused (a subtree of :class:`cloud_hub.errors.HubError`).

::

    EnrollmentRefusedError        the request is refused (HTTP 4xx); nothing was issued
    ├── TokenRefusedError         the token cannot be used                       (403)
    │   ├── UnknownTokenError     never issued (or mistyped)
    │   ├── TokenExpiredError     past its expiry
    │   └── TokenUsedError        already consumed by an earlier enrollment
    ├── CsrRejectedError          not a CSR / bad self-signature / unsupported key (400)
    └── EnrollmentConflictError   device id taken, reserved, or class mismatch   (409)
"""

from __future__ import annotations

from cloud_hub.errors import HubError

__all__ = [
    "CsrRejectedError",
    "EnrollmentConflictError",
    "EnrollmentRefusedError",
    "TokenExpiredError",
    "TokenRefusedError",
    "TokenUsedError",
    "UnknownTokenError",
]


class EnrollmentRefusedError(HubError):
    """An enrollment request was refused; nothing was issued or consumed."""

    http_status = 400


class TokenRefusedError(EnrollmentRefusedError):
    """The enrollment token cannot be used."""

    http_status = 403


class UnknownTokenError(TokenRefusedError):
    """No such token was ever issued."""


class TokenExpiredError(TokenRefusedError):
    """The token is past its expiry time."""


class TokenUsedError(TokenRefusedError):
    """The token was already consumed (tokens are single-use)."""


class CsrRejectedError(EnrollmentRefusedError):
    """The certificate signing request is unusable."""

    http_status = 400


class EnrollmentConflictError(EnrollmentRefusedError):
    """The requested identity conflicts with an existing or reserved one."""

    http_status = 409
