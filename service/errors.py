"""HTTP errors of the detection service: one BentoMLException subclass per status.

Every error the service answers with is one of these, rendered by `error_response` as
`{"error": {"code": 415, "kind": "not_image", "message": "..."}}`; the message says what
to change. `from_image_error` maps `models.core.preprocess.ImageError` kinds to statuses.
"""

from __future__ import annotations

from http import HTTPStatus

from bentoml.exceptions import BentoMLException

from models.core.preprocess import ImageError
from models.evidence.video import VideoError


class ServiceError(BentoMLException):
    error_code = HTTPStatus.BAD_REQUEST
    kind = "bad_request"

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    @property
    def status(self) -> int:
        return int(self.error_code)

    def to_dict(self) -> dict:
        return {"code": self.status, "kind": self.kind, "message": self.message}

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(ServiceError):
    error_code = HTTPStatus.BAD_REQUEST
    kind = "bad_request"


class Unauthorized(ServiceError):
    error_code = HTTPStatus.UNAUTHORIZED
    kind = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFound(ServiceError):
    error_code = HTTPStatus.NOT_FOUND
    kind = "not_found"


class MethodNotAllowed(ServiceError):
    error_code = HTTPStatus.METHOD_NOT_ALLOWED
    kind = "method_not_allowed"


class RequestTimeout(ServiceError):
    error_code = HTTPStatus.REQUEST_TIMEOUT
    kind = "body_timeout"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}  # the rest of the body is never read


class PayloadTooLarge(ServiceError):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    kind = "too_large"


class UnsupportedMediaType(ServiceError):
    error_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    kind = "unsupported_media_type"


class Unprocessable(ServiceError):
    error_code = HTTPStatus.UNPROCESSABLE_ENTITY
    kind = "unprocessable"


class Overloaded(ServiceError):
    error_code = HTTPStatus.SERVICE_UNAVAILABLE
    kind = "overloaded"
    retry_after_s = 1

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class GatewayTimeout(ServiceError):
    error_code = HTTPStatus.GATEWAY_TIMEOUT
    kind = "timeout"


class InternalError(ServiceError):
    error_code = HTTPStatus.INTERNAL_SERVER_ERROR
    kind = "internal"


# Every status the service answers with, for the OpenAPI document and the format net in the guard.
ERRORS_BY_STATUS: dict[int, type[ServiceError]] = {
    int(c.error_code): c for c in (BadRequest, Unauthorized, NotFound, MethodNotAllowed, RequestTimeout,
                                   PayloadTooLarge, UnsupportedMediaType, Unprocessable, InternalError,
                                   Overloaded, GatewayTimeout)
}

# ImageError.kind -> the error class answered for it.
IMAGE_ERRORS: dict[str, type[ServiceError]] = {
    "empty": BadRequest,
    "too_large": PayloadTooLarge,
    "not_image": UnsupportedMediaType,
    "unsupported_format": UnsupportedMediaType,
    "truncated": Unprocessable,
    "too_many_pixels": PayloadTooLarge,
}


def from_image_error(e: ImageError) -> ServiceError:
    return IMAGE_ERRORS[e.kind](str(e), kind=e.kind)


def error_response(err: ServiceError):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": err.to_dict()}, status_code=err.status, headers=err.headers())


# VideoError.kind -> the error class answered for it (models/evidence/video.py).
VIDEO_ERRORS: dict[str, type[ServiceError]] = {
    "empty": BadRequest,
    "unsupported": UnsupportedMediaType,
    "corrupt": Unprocessable,
    "too_long": PayloadTooLarge,
    "too_many_frames": PayloadTooLarge,
    "too_many_pixels": PayloadTooLarge,
    "bad_option": BadRequest,
}


def from_video_error(e: VideoError) -> ServiceError:
    return VIDEO_ERRORS[e.kind](str(e), kind=e.kind)
