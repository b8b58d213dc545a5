"""Errors of the registry, under :class:`cloud_hub.errors.RegistryError`.

::

    RegistryError
    ├── NotFoundError      the entity does not exist
    ├── ConflictError      it exists already with other content / a concurrent update won
    └── RegistryInputError a value is out of range or malformed
"""

from __future__ import annotations

from cloud_hub.errors import RegistryError

__all__ = ["ConflictError", "NotFoundError", "RegistryInputError"]


class NotFoundError(RegistryError):
    """The requested entity does not exist."""


class ConflictError(RegistryError):
    """The entity exists with different content, or a concurrent update won."""


class RegistryInputError(RegistryError):
    """A value handed to the registry is out of range or malformed."""
