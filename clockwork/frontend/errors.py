"""Status mapping: clockwork outcomes -> HTTP status and gRPC code that clients can act on.

    invalid input (front end or controller)     400 INVALID_ARGUMENT  (fix the request)
    unknown model / version                     404 NOT_FOUND
    controller rejection: could not start in time, controller skipped, overloaded, worker
      lost, initializing, stale epoch (it restarted); the front end at its in-flight limit;
      controller unreachable, not a controller, or the connection lost with the request
      outstanding
                                                503 UNAVAILABLE       (retry, elsewhere or later)
    timeout (controller's, or no answer in time) 504 DEADLINE_EXCEEDED
    anything else (a worker error, an internal error)
                                                500 INTERNAL
The error body / gRPC details carry clockwork's status code and name, so a client can tell
"could not start in time" (8) from "overloaded" (9).
"""
from __future__ import annotations

import grpc

from ..client.api import CONNECTION_LOST, NO_ANSWER, SEND_FAILED, WRONG_PEER, status_name
from ..status import Status

GRPC_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
              503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
              500: grpc.StatusCode.INTERNAL, 413: grpc.StatusCode.RESOURCE_EXHAUSTED}

_HTTP = {
    Status.INVALID_REQUEST: 400,
    Status.TIMEOUT: 504, NO_ANSWER: 504,
    Status.INITIALIZING: 503, Status.CONTROLLER_SKIPPED: 503, Status.COULD_NOT_START_IN_TIME: 503,
    Status.OVERLOADED: 503, Status.WORKER_LOST: 503, Status.STALE_EPOCH: 503,
    CONNECTION_LOST: 503, SEND_FAILED: 503, WRONG_PEER: 503,
}


def http_status(code: int) -> int:
    """HTTP status for a clockwork status code (SUCCESS is 200)."""
    return 200 if code == Status.SUCCESS else _HTTP.get(code, 500)


class FrontendError(Exception):
    """A request that cannot be served: its HTTP status, and clockwork's status when it has one."""

    def __init__(self, http: int, message: str, status: int | None = None):
        super().__init__(message)
        self.http = http
        self.message = message
        self.status = status

    @classmethod
    def from_status(cls, code: int, message: str) -> "FrontendError":
        return cls(http_status(code), message or status_name(code), code)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return GRPC_CODES.get(self.http, grpc.StatusCode.INTERNAL)

    def body(self) -> dict:
        """The HTTP error body: the protocol's {"error": ...} plus clockwork's status."""
        out = {"error": self.message}
        if self.status is not None:
            out["clockwork_status"] = self.status
            out["clockwork_status_name"] = status_name(self.status)
        return out

    def details(self) -> str:
        """The gRPC status details (one line)."""
        if self.status is None:
            return self.message
        return f"{self.message} [clockwork status {self.status}: {status_name(self.status)}]"


def bad_request(message: str) -> FrontendError:
    return FrontendError(400, message, Status.INVALID_REQUEST)


def not_found(message: str) -> FrontendError:
    return FrontendError(404, message)


def unavailable(message: str, status: int | None = None) -> FrontendError:
    return FrontendError(503, message, status)
