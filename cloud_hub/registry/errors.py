"""Errors of the registry, under :class:`cloud_hub.errors.RegistryError`, and the database
layer's own errors under registry-owned names (the rest of the hub catches these instead of
importing the database library).

::

    RegistryError
    ├── NotFoundError      the entity does not exist
    ├── ConflictError      it exists already with other content / a concurrent update won
    └── RegistryInputError a value is out of range or malformed

    DatabaseError                  anything the database layer raises
    ├── DatabaseUnavailableError   cannot reach or use the database now (down, locked, timed out)
    ├── DatabaseInterfaceError     the driver's connection broke underneath
    ├── DatabaseConflictError      a constraint refused the write (a concurrent insert won)
    └── DatabaseValueError         a value the database cannot store
"""

from __future__ import annotations

from sqlalchemy.exc import DataError as DatabaseValueError
from sqlalchemy.exc import IntegrityError as DatabaseConflictError
from sqlalchemy.exc import InterfaceError as DatabaseInterfaceError
from sqlalchemy.exc import OperationalError as DatabaseUnavailableError
from sqlalchemy.exc import SQLAlchemyError as DatabaseError

from cloud_hub.errors import RegistryError

__all__ = [
    "TRANSIENT_DATABASE_ERRORS",
    "ConflictError",
    "DatabaseConflictError",
    "DatabaseError",
    "DatabaseInterfaceError",
    "DatabaseUnavailableError",
    "DatabaseValueError",
    "NotFoundError",
    "RegistryInputError",
]

# Failures that a retry of the same transaction may overcome.
TRANSIENT_DATABASE_ERRORS: tuple[type[DatabaseError], ...] = (
    DatabaseUnavailableError,
    DatabaseInterfaceError,
)


class NotFoundError(RegistryError):
    """The requested entity does not exist."""


class ConflictError(RegistryError):
    """The entity exists with different content, or a concurrent update won."""


class RegistryInputError(RegistryError):
    """A value handed to the registry is out of range or malformed."""
