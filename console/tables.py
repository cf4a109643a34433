"""The console's tables, kept in the registry's database (SQLite file or PostgreSQL) beside its history.

- ``review_items``: one row per scan the servers doubted; its state moves queued -> claimed ->
  submitting -> labeled | rejected, each move a conditional update, so two inspectors cannot both win;
- ``accounts``, ``api_tokens``, ``sessions``: people, the hashes of their script tokens, browser logins;
- ``jobs``: dataset uploads and consolidations started from the browser, with progress.
"""

from __future__ import annotations

TABLES = (
    """CREATE TABLE IF NOT EXISTS review_items (
        scan_id TEXT PRIMARY KEY, rig_id TEXT NOT NULL, domain TEXT NOT NULL, doubt DOUBLE PRECISION NOT NULL,
        drift DOUBLE PRECISION NOT NULL, version BIGINT NOT NULL, reasons TEXT NOT NULL, regions TEXT NOT NULL,
        width BIGINT NOT NULL, height BIGINT NOT NULL, captured_at DOUBLE PRECISION NOT NULL,
        queued_at DOUBLE PRECISION NOT NULL, state TEXT NOT NULL, claimed_by TEXT, lease_until DOUBLE PRECISION,
        finished_by TEXT, finished_at DOUBLE PRECISION, labeled_domain TEXT, reason TEXT)""",
    "CREATE INDEX IF NOT EXISTS review_by_state ON review_items (state, doubt)",
    """CREATE TABLE IF NOT EXISTS accounts (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS api_tokens (
        token_sha256 TEXT PRIMARY KEY, account TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        id_sha256 TEXT PRIMARY KEY, account TEXT NOT NULL, csrf TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, actor TEXT NOT NULL, state TEXT NOT NULL, done BIGINT NOT NULL,
        total BIGINT NOT NULL, detail TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
)
