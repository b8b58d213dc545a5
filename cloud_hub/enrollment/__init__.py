"""Device identity on the hub side: CA, enrollment tokens, CSR signing, broker ACL, HTTP route.

Typical use::

    service = open_enrollment(data_dir, config=EnrollmentConfig(mqtt_url="mqtts://hub:8883"))
    secret, record = service.issue_token(device_class="jetson-orin")
    app.include_router(enrollment_router(service))
"""

from cloud_hub.enrollment.acl import render_device_acl, render_hub_acl
from cloud_hub.enrollment.broker import (
    BrokerFiles,
    BrokerTlsConfig,
    render_mosquitto_config,
    write_broker_files,
)
from cloud_hub.enrollment.ca import CertificateAuthority, IssuedCertificate, cert_fingerprint
from cloud_hub.enrollment.errors import (
    CsrRejectedError,
    EnrollmentConflictError,
    EnrollmentRefusedError,
    TokenExpiredError,
    TokenRefusedError,
    TokenUsedError,
    UnknownTokenError,
)
from cloud_hub.enrollment.hub_identity import (
    DEFAULT_HUB_USER,
    HubIdentity,
    configure_hub_identity,
    hub_client_ca,
    load_hub_identity,
)
from cloud_hub.enrollment.hubdir import open_enrollment, server_tls_files
from cloud_hub.enrollment.router import enrollment_router
from cloud_hub.enrollment.service import (
    DeviceBrokerSettings,
    EnrollmentConfig,
    EnrollmentRequest,
    EnrollmentResult,
    EnrollmentService,
)
from cloud_hub.enrollment.store import EnrollmentRepository, InMemoryEnrollmentRepository
from cloud_hub.enrollment.tokens import EnrolledDevice, TokenRecord
from cloud_hub.registry.enrollment import SqlEnrollmentRepository

__all__ = [
    "DEFAULT_HUB_USER",
    "BrokerFiles",
    "BrokerTlsConfig",
    "CertificateAuthority",
    "CsrRejectedError",
    "DeviceBrokerSettings",
    "EnrolledDevice",
    "EnrollmentConfig",
    "EnrollmentConflictError",
    "EnrollmentRefusedError",
    "EnrollmentRepository",
    "EnrollmentRequest",
    "EnrollmentResult",
    "EnrollmentService",
    "HubIdentity",
    "InMemoryEnrollmentRepository",
    "IssuedCertificate",
    "SqlEnrollmentRepository",
    "TokenExpiredError",
    "TokenRecord",
    "TokenRefusedError",
    "TokenUsedError",
    "UnknownTokenError",
    "cert_fingerprint",
    "configure_hub_identity",
    "enrollment_router",
    "hub_client_ca",
    "load_hub_identity",
    "open_enrollment",
    "render_device_acl",
    "render_hub_acl",
    "render_mosquitto_config",
    "server_tls_files",
    "write_broker_files",
]
