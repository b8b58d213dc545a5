"""The exception tree of the ``shared`` package.

::

    FedfleetError
    ├── ConfigError                 local configuration is invalid
    ├── ProtocolError               bad remote data on the wire
    │   ├── MalformedMessageError   not decodable / fields missing or of the wrong type
    │   │   └── NonFiniteNumberError  a number that is NaN or overflows to infinity
    │   ├── UnsupportedVersionError schema major version we do not speak
    │   └── MessageTooLargeError    over the configured size limit
    └── BundleError                 a bundle or manifest is refused
        ├── MalformedBundleError    not a bundle / truncated / inconsistent container
        └── VerificationError       well-formed but not trustworthy
            ├── BadSignatureError   signature does not verify / threshold not met
            ├── UnknownKeyError     signed by a key the trust root does not know
            ├── RevokedKeyError     signed by a revoked key
            ├── ExpiredError        manifest or keyring past its expiry
            ├── RollbackError       version not newer than installed (rollback / freeze)
            ├── ReplayError         a one-time signed order that was already used
            ├── HashMismatchError   artifact bytes do not match sha256 / size
            ├── MixAndMatchError    artifact or chunk belongs to another manifest
            ├── DeltaBaseError      a delta's base is not what this device has
            └── WrongTargetError    bundle targets another device class

``cloud_hub`` and ``edge_agent`` have their own roots and translate these at their edges.
"""

from __future__ import annotations


class FedfleetError(Exception):
    """Root of every error raised by ``shared``."""


class ConfigError(FedfleetError):
    """Local configuration is invalid (raised before any work starts)."""


class ProtocolError(FedfleetError):
    """Bad data received from a remote peer."""


class MalformedMessageError(ProtocolError):
    """A payload could not be decoded into a valid message."""


class NonFiniteNumberError(MalformedMessageError):
    """A JSON number is NaN or infinite (``NaN``, ``Infinity``, ``1e999``): refused (R14)."""


class UnsupportedVersionError(ProtocolError):
    """A payload carries a schema major version this side does not speak."""


class MessageTooLargeError(ProtocolError):
    """A payload exceeds the configured size limit."""


class BundleError(FedfleetError):
    """A bundle or manifest was refused."""


class MalformedBundleError(BundleError):
    """The bytes are not a well-formed bundle."""


class VerificationError(BundleError):
    """A well-formed bundle failed a trust check."""


class BadSignatureError(VerificationError):
    """A signature does not verify, or too few valid signatures."""


class UnknownKeyError(VerificationError):
    """Signed by a key the trust root does not delegate to."""


class RevokedKeyError(VerificationError):
    """Signed by a key that has been revoked."""


class ExpiredError(VerificationError):
    """Metadata is past its expiry time."""


class RollbackError(VerificationError):
    """The version is not newer than the installed one (rollback or freeze attack)."""


class ReplayError(VerificationError):
    """A signed one-time order (e.g. a rollback order) that this device already used (R5)."""


class HashMismatchError(VerificationError):
    """Artifact bytes do not match the manifest's sha256 or size."""


class DeltaBaseError(VerificationError):
    """A delta names a base artifact this device does not have (fetch the full bundle)."""


class WrongTargetError(VerificationError):
    """The bundle targets another device class or model."""


class MixAndMatchError(VerificationError):
    """An artifact or chunk does not belong to the manifest being installed."""


__all__ = [
    "BadSignatureError",
    "BundleError",
    "ConfigError",
    "DeltaBaseError",
    "ExpiredError",
    "FedfleetError",
    "HashMismatchError",
    "MalformedBundleError",
    "MalformedMessageError",
    "MessageTooLargeError",
    "MixAndMatchError",
    "NonFiniteNumberError",
    "ProtocolError",
    "ReplayError",
    "RevokedKeyError",
    "RollbackError",
    "UnknownKeyError",
    "UnsupportedVersionError",
    "VerificationError",
    "WrongTargetError",
]
