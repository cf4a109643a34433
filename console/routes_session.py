"""Logging in and out of the browser pages; `/api/me` says who is logged in and hands the CSRF token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel

from weldstream.console.accounts import Account
from weldstream.console.auth import SESSION_COOKIE, caller, services

router = APIRouter(prefix="/api", tags=["session"])


class Login(BaseModel):
    name: str
    password: str


@router.post("/login")
async def login(body: Login, request: Request, response: Response) -> dict:
    svc = services(request)
    account = svc.accounts.check_password(body.name, body.password)
    if account is None:
        raise HTTPException(401, "unknown account or wrong password")
    session_id, session = svc.accounts.open_session(account, svc.cfg.session_hours * 3600)
    response.set_cookie(SESSION_COOKIE, session_id, max_age=int(svc.cfg.session_hours * 3600), httponly=True,
                        samesite="strict", secure=svc.cfg.secure_cookies, path="/")
    return {"name": account.name, "role": account.role, "csrf": session.csrf}


@router.post("/logout")
async def logout(request: Request, response: Response, account: Annotated[Account, Depends(caller)]) -> dict:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        services(request).accounts.close_session(session_id)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return {"name": account.name}


@router.get("/me")
async def me(request: Request, account: Annotated[Account, Depends(caller)]) -> dict:
    session_id = request.cookies.get(SESSION_COOKIE)
    session = services(request).accounts.session(session_id) if session_id else None
    return {"name": account.name, "role": account.role, "csrf": session.csrf if session else None}
