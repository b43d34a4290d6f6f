"""Errors on the wire, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Every failure the server reports goes through `error_response`, so a client (the official openai
client included, which raises BadRequestError, AuthenticationError, NotFoundError, ... by status)
always gets a status code that says whose fault it was and a message that says what to change.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from runtime.errors import BackendUnavailableError, ContextLengthError, MiniCPMError

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 500: "server_error", 502: "server_error", 503: "server_overloaded"}


class APIError(Exception):
    """A response the server chooses to send instead of an answer."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    error_type = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def from_exception(exc: BaseException) -> APIError:
    """What a client sees for an exception from request handling or from a generation."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, BackendUnavailableError):  # the openai backend's server is down: not the client's fault
        return APIError(502, f"the model's backend failed: {exc}")
    if isinstance(exc, MiniCPMError):  # InvalidRequestError, a template error, ...: the request's fault
        return APIError(400, str(exc))
    return APIError(500, f"internal error ({type(exc).__name__}: {exc}); the server logged the details")


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's 422 list of problems, as one 400 message that names the fields."""
    problems, param = [], None
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", error.get("msg"))
            return APIError(400, f"the request body is not valid JSON ({reason})", code="invalid_json")
        where = ".".join(location)
        param = param or where or None
        problems.append(f"{where}: {error.get('msg')}" if where else f"request body: {error.get('msg')}")
    return APIError(400, "; ".join(problems[:5]) or "invalid request body", param=param)
