"""What both drivers need from ``httpx``: building a request from the core's
:class:`~concord._core.Request`, and turning answers and exceptions into outcomes."""

from __future__ import annotations

from typing import Optional, Union

import httpx

from ._core import Failure, Request, Response

#: Connection failures: the request never reached the server, so retrying is always safe.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def timeout(default: Optional[float], request: Request) -> httpx.Timeout:
    """The client's timeout, with the request's read timeout if it has its own."""
    if request.timeout is None:
        return httpx.Timeout(default)
    return httpx.Timeout(default, read=request.timeout)


def build(
    http: Union[httpx.Client, httpx.AsyncClient], request: Request, default: Optional[float]
) -> httpx.Request:
    """The ``httpx`` request for a core request (the same for both clients)."""
    return http.build_request(
        request.method,
        request.path,
        params=list(request.params) or None,
        headers=list(request.headers),
        content=request.content,
        timeout=timeout(default, request),
    )


def failure(error: Exception) -> Failure:
    """A transport exception as an outcome."""
    return Failure(error=error, sent=not isinstance(error, _NOT_SENT))


def headers(response: httpx.Response) -> dict:
    """Response headers with lowercased names (repeated ones joined by commas)."""
    return {name.lower(): value for name, value in response.headers.items()}


def outcome(response: httpx.Response) -> Response:
    """A complete answer as an outcome (its body already read)."""
    return Response(
        status=response.status_code, headers=headers(response), content=response.content
    )


#: What reading a stream may raise when the connection breaks.
STREAM_ERRORS = (httpx.TransportError, httpx.StreamError)
