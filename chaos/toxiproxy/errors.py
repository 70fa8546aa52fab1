"""API errors of the Toxiproxy-compatible server, with Toxiproxy's messages and status codes.

Every error the API returns is an `ApiError`: the handler layer turns it into Toxiproxy's error body
(`{"error": message, "status": code}` + newline). Anything else escaping a handler is a bug in this server
and becomes a 500 with the exception text, logged with its traceback.
"""

from __future__ import annotations

from typing import Final


class ApiError(Exception):
    """An error with an HTTP status and a Toxiproxy message."""

    def __init__(self, status: int, message: str) -> None:
        assert 400 <= status <= 599, status
        assert message, "an API error needs a message"
        super().__init__(message)
        self.status = status
        self.message = message


# Toxiproxy's own messages (api.go, proxy_collection.go, toxic_collection.go), verbatim: clients match them.
BAD_REQUEST_BODY: Final = "bad request body"
MISSING_FIELD: Final = "missing required field"
PROXY_NOT_FOUND: Final = "proxy not found"
PROXY_EXISTS: Final = "proxy already exists"
INVALID_STREAM: Final = "stream was invalid, can be either upstream or downstream"
INVALID_TOXIC_TYPE: Final = "invalid toxic type"
TOXIC_EXISTS: Final = "toxic already exists"
TOXIC_NOT_FOUND: Final = "toxic not found"


def bad_request_body(detail: str) -> ApiError:
    return ApiError(400, f"{BAD_REQUEST_BODY}: {detail}")


def missing_field(field: str) -> ApiError:
    return ApiError(400, f"{MISSING_FIELD}: {field}")


def proxy_not_found() -> ApiError:
    return ApiError(404, PROXY_NOT_FOUND)


def proxy_exists() -> ApiError:
    return ApiError(409, PROXY_EXISTS)


def invalid_stream() -> ApiError:
    return ApiError(400, INVALID_STREAM)


def invalid_toxic_type() -> ApiError:
    return ApiError(400, INVALID_TOXIC_TYPE)


def toxic_exists() -> ApiError:
    return ApiError(409, TOXIC_EXISTS)


def toxic_not_found() -> ApiError:
    return ApiError(404, TOXIC_NOT_FOUND)


def listen_failed(message: str) -> ApiError:
    """A proxy could not listen (bind error, unresolvable host): Toxiproxy answers 500 with Go's net error."""
    return ApiError(500, message)
