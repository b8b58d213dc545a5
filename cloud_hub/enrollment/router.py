"""The HTTP face of enrollment: a FastAPI ``APIRouter`` the hub app mounts.

::

    GET  /api/v1/enroll/ca.pem   the hub CA certificate (public; devices compare its
                                 SHA-256 with the fingerprint given alongside their token)
    POST /api/v1/enroll          token + CSR (+ class, id, labels) -> certificate, CA,
                                 MQTT settings, trust root, topic prefix

Mount with ``app.include_router(enrollment_router(service))``. The token is the credential
of ``POST /api/v1/enroll``: the route must stay outside operator authentication.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.enrollment.errors import EnrollmentRefusedError
from cloud_hub.enrollment.service import EnrollmentRequest, EnrollmentService
from cloud_hub.errors import HubError

__all__ = ["EnrollBody", "enrollment_router"]

log = logging.getLogger(__name__)


class EnrollBody(BaseModel):
    """``POST /api/v1/enroll`` request body (strict JSON types, as every API body)."""

    model_config = ConfigDict(strict=True)
    token: str = Field(min_length=1, max_length=256)
    csr: str = Field(min_length=1, max_length=16 * 1024, description="PEM PKCS#10 request")
    device_class: str | None = Field(default=None, max_length=128)
    device_id: str | None = Field(default=None, max_length=128)
    labels: dict[str, str] = Field(default_factory=dict)


class MqttBody(BaseModel):
    url: str
    username: str
    client_id: str
    auth: str


class EnrollResponse(BaseModel):
    """``POST /api/v1/enroll`` answer."""

    device_id: str
    device_class: str
    labels: dict[str, str]
    certificate: str
    ca_certificate: str
    cert_not_after: str
    mqtt: MqttBody
    topic_prefix: str
    trust_root: dict[str, Any] | None
    keyring: dict[str, Any] | None = None  # R10: the current keyring (root-signed)


def enrollment_router(service: EnrollmentService) -> APIRouter:
    """The enrollment routes bound to ``service``."""
    router = APIRouter(prefix="/api/v1/enroll", tags=["enrollment"])

    @router.get("/ca.pem", response_class=Response)
    def ca_certificate() -> Response:
        return Response(content=service.ca.cert_pem, media_type="application/x-pem-file")

    @router.post("", response_model=EnrollResponse)
    def enroll(body: EnrollBody) -> dict[str, Any]:
        request = EnrollmentRequest(
            token=body.token,
            csr_pem=body.csr.encode("utf-8"),
            device_class=body.device_class,
            device_id=body.device_id,
            labels=body.labels,
        )
        try:
            result = service.enroll(request)
        except EnrollmentRefusedError as exc:
            log.warning("enrollment refused: %s", exc)
            raise HTTPException(status_code=exc.http_status, detail=str(exc)) from exc
        except HubError as exc:
            log.error("enrollment failed: %s", exc)
            raise HTTPException(status_code=503, detail="enrollment unavailable") from exc
        log.info("enrolled device %s (class %s)", result.device_id, result.device_class)
        return result.to_dict()

    return router
