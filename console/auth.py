"""Who is asking, and may they: a bearer API token (scripts) or a session cookie (browsers).

Every change a browser asks for carries the session's CSRF secret in the ``X-CSRF-Token`` header; a
bearer token is not sent by a browser on its own, so token requests need none. The cookie is HttpOnly
and SameSite=Strict, and Secure behind TLS.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request

from weldstream.console.accounts import Account
from weldstream.console.services import Services

SESSION_COOKIE = "weldstream_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def services(request: Request) -> Services:
    return request.app.state.services


def caller(request: Request) -> Account:
    """The account behind a request, or 401."""
    known = services(request).accounts
    authorization = request.headers.get("authorization", "")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        account = known.by_token(token.strip()) if scheme.lower() == "bearer" else None
        if account is None:
            raise HTTPException(401, "the API token is not valid", headers={"WWW-Authenticate": "Bearer"})
        return account
    session_id = request.cookies.get(SESSION_COOKIE)
    session = known.session(session_id) if session_id else None
    if session is None:
        raise HTTPException(401, "log in first (or send 'Authorization: Bearer <token>')")
    if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != session.csrf:
        raise HTTPException(403, "missing or wrong CSRF token: send the X-CSRF-Token header given at login")
    return session.account


def require(role: str) -> Callable[[Request], Account]:
    """A dependency: the caller, if they hold ``role`` (or a stronger one); else 403."""

    def check(request: Request) -> Account:
        account = caller(request)
        if not account.may(role):
            raise HTTPException(403, f"{account.name} is a {account.role}; this needs a {role}")
        return account

    return check
