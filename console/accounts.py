"""People and what they may do: accounts with argon2 password hashes (pwdlib), API tokens for scripts,
browser sessions with their CSRF secret.

Tokens and session ids are random 256-bit secrets handed out once; the database keeps only their
SHA-256, so a copy of the database logs nobody in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from pwdlib import PasswordHash

from weldstream.registry import Registry

ROLES = ("viewer", "inspector", "operator")  # each may do what the ones before it may
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8
_hasher = PasswordHash.recommended()  # argon2id


@dataclass(frozen=True)
class Account:
    name: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this account holds ``role`` or a stronger one."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class Session:
    account: Account
    csrf: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Accounts:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def add(self, name: str, role: str, password: str) -> str:
        """Create (or replace the password and role of) an account; returns a new API token for it."""
        if not NAME_PATTERN.match(name):
            raise ValueError(f"account name {name!r}: letters, digits and . _ @ - only, up to 64 characters")
        if role not in ROLES:
            raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"password: at least {MIN_PASSWORD} characters")
        hashed = _hasher.hash(password)
        if not self.registry.execute("UPDATE accounts SET role = ?, password_hash = ? WHERE name = ?",
                                     (role, hashed, name)):
            self.registry.execute("INSERT INTO accounts (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                                  (name, role, hashed, time.time()))
        return self.new_token(name)

    def new_token(self, name: str) -> str:
        token = "wst_" + secrets.token_urlsafe(32)
        self.registry.execute("INSERT INTO api_tokens (token_sha256, account, created_at) VALUES (?, ?, ?)",
                              (_digest(token), name, time.time()))
        return token

    def get(self, name: str) -> Account | None:
        rows = self.registry.query("SELECT name, role FROM accounts WHERE name = ?", (name,))
        return Account(*rows[0]) if rows else None

    def all(self) -> list[Account]:
        return [Account(*row) for row in self.registry.query("SELECT name, role FROM accounts ORDER BY name")]

    def check_password(self, name: str, password: str) -> Account | None:
        rows = self.registry.query("SELECT role, password_hash FROM accounts WHERE name = ?", (name,))
        if not rows:
            _hasher.hash(password)  # the same work as a real check: no timing hint of which names exist
            return None
        role, hashed = rows[0]
        return Account(name, role) if _hasher.verify(password, hashed) else None

    def by_token(self, token: str) -> Account | None:
        rows = self.registry.query(
            "SELECT a.name, a.role FROM api_tokens t JOIN accounts a ON a.name = t.account WHERE t.token_sha256 = ?",
            (_digest(token),))
        return Account(*rows[0]) if rows else None

    # -- browser sessions
    def open_session(self, account: Account, lifetime_s: float) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = time.time()
        self.registry.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
        self.registry.execute("INSERT INTO sessions (id_sha256, account, csrf, expires_at) VALUES (?, ?, ?, ?)",
                              (_digest(session_id), account.name, csrf, now + lifetime_s))
        return session_id, Session(account, csrf)

    def session(self, session_id: str) -> Session | None:
        rows = self.registry.query(
            "SELECT a.name, a.role, s.csrf FROM sessions s JOIN accounts a ON a.name = s.account "
            "WHERE s.id_sha256 = ? AND s.expires_at > ?", (_digest(session_id), time.time()))
        return Session(Account(rows[0][0], rows[0][1]), rows[0][2]) if rows else None

    def close_session(self, session_id: str) -> None:
        self.registry.execute("DELETE FROM sessions WHERE id_sha256 = ?", (_digest(session_id),))
