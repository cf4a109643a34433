"""One prefix of one S3 bucket, as the weight store uses it: a handful of calls, botocore's errors made ours.

The client follows boto3's own conventions and nothing else: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY (or a credentials file, a profile, an instance role), AWS_CA_BUNDLE; the region from
AWS_REGION (boto3 itself reads only AWS_DEFAULT_REGION), else the profile's, else us-east-1, which SeaweedFS,
MinIO, Ceph and Garage accept. Path-style addressing works with all of those and with AWS. Timeouts are short
and a call is tried twice at most, so a store that does not answer raises StoreUnavailable within seconds and
callers back off their own way. boto3 is imported when a bucket is opened, so a directory store never loads it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
_CREDENTIALS = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the credentials file)"
# Answers that mean the credentials or their rights are wrong; retrying will not help.
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


class StoreUnavailable(OSError):
    """The object store does not answer or will not serve (endpoint down, timeouts, no such bucket): transient
    for a caller that already has a version, as any other OSError is."""


class StoreAccessDenied(StoreUnavailable):
    """The object store refused the credentials (a wrong secret, an unknown key id, too few rights)."""


class PreconditionFailed(Exception):
    """A conditional put lost (HTTP 412): the object exists (If-None-Match) or changed (If-Match)."""


class _NotModified(Exception):
    """A conditional get found the object unchanged (HTTP 304)."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing slash; "" for the whole bucket

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket/prefix`` (the prefix may be empty or nested)."""
        if not url.startswith("s3://"):
            raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"{url!r} names no bucket (expected s3://bucket/prefix)")
        return cls(bucket, prefix.strip("/"))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(name)}".rstrip("/")


class S3Bucket:
    """The calls the weight store makes, by names relative to the prefix; every failure is a project error."""

    def __init__(self, location: S3Location) -> None:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session()
        region = os.environ.get("AWS_REGION") or session.region_name or DEFAULT_REGION
        config = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"},
                        s3={"addressing_style": "path"})
        self.client: Any = session.client("s3", region_name=region, config=config)
        self.location = location
        self.endpoint: str = self.client.meta.endpoint_url

    def get(self, name: str, if_none_match: str | None = None) -> tuple[bytes | None, str] | None:
        """(body, etag); body is None when the object still has etag ``if_none_match`` (304). None: no object."""
        extra = {"IfNoneMatch": if_none_match} if if_none_match else {}
        try:
            with self._translated(name):
                answer = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key(name), **extra)
                return answer["Body"].read(), answer["ETag"]
        except _NotModified:
            return None, if_none_match or ""
        except FileNotFoundError:
            return None

    def read(self, name: str) -> bytes:
        """An object's bytes; a missing object raises FileNotFoundError."""
        with self._translated(name):
            return self.client.get_object(Bucket=self.location.bucket, Key=self.location.key(name))["Body"].read()

    def download(self, name: str, path: Path) -> None:
        """Stream an object into a file; a missing object raises FileNotFoundError."""
        with self._translated(name):
            answer = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key(name))
            with open(path, "wb") as handle:
                shutil.copyfileobj(answer["Body"], handle, 1 << 20)

    def size(self, name: str) -> int | None:
        """The object's size in bytes (a HEAD request); None when there is no such object."""
        try:
            with self._translated(name):
                return int(self.client.head_object(Bucket=self.location.bucket,
                                                   Key=self.location.key(name))["ContentLength"])
        except FileNotFoundError:
            return None

    def put(self, name: str, body: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Write an object and return its etag: only where none exists (``if_none_match``), or only over the
        version with etag ``if_match``; a lost condition raises PreconditionFailed."""
        extra: dict[str, str] = {"IfNoneMatch": "*"} if if_none_match else {}
        if if_match is not None:
            extra["IfMatch"] = if_match
        with self._translated(name):
            answer = self.client.put_object(Bucket=self.location.bucket, Key=self.location.key(name), Body=body,
                                            **extra)
            return answer["ETag"]

    def names(self, under: str) -> list[str]:
        """Names (relative to the prefix) of every object whose name starts with ``under`` (a LIST)."""
        start = len(self.location.key(""))
        with self._translated(under):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket,
                                                                          Prefix=self.location.key(under))
            return [item["Key"][start:] for page in pages for item in page.get("Contents", [])]

    def discard(self, names: list[str]) -> None:
        """Delete objects nothing refers to; where that fails they stay, unseen, and it is only logged."""
        try:
            with self._translated(names[0] if names else ""):
                for name in names:
                    self.client.delete_object(Bucket=self.location.bucket, Key=self.location.key(name))
        except StoreUnavailable as exc:
            log.info("left unreferenced objects %s in %s: %s", names, self.location.url(), exc)

    @contextmanager
    def _translated(self, name: str) -> Iterator[None]:
        """botocore's exceptions as ours, naming the store and the cause (never a credential)."""
        from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        where = self.location.url()
        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "") or str(_status(exc))
            if code == "304" or _status(exc) == 304:
                raise _NotModified() from None
            if code == "PreconditionFailed" or _status(exc) == 412:
                raise PreconditionFailed(self.location.url(name)) from None
            if code in _DENIED or _status(exc) == 403:
                raise StoreAccessDenied(f"access denied for {where} ({code}): {_CREDENTIALS}") from None
            if code == "NoSuchBucket":
                raise StoreUnavailable(f"{where}: no bucket {self.location.bucket!r} at {self.endpoint}") from None
            if code in _MISSING or _status(exc) == 404:
                raise FileNotFoundError(f"{self.location.url(name)} is missing") from None
            raise StoreUnavailable(f"{where} at {self.endpoint} answered {code} for {name!r}") from None
        except NoCredentialsError:
            raise StoreAccessDenied(f"no credentials for {where}: {_CREDENTIALS}") from None
        except (BotoConnectionError, HTTPClientError) as exc:
            raise StoreUnavailable(f"{where} is unreachable at {self.endpoint}: {exc}") from None



class SharedJson:
    """One small JSON object that many processes poll and a few change: read with If-None-Match (a 304 costs no
    body: the value read last time is still right), changed by compare-and-swap (If-None-Match: * to create,
    If-Match to replace; a 412 means another writer came first, so read again and redo the change)."""

    def __init__(self, bucket: S3Bucket, name: str, attempts: int = 50) -> None:
        self.bucket = bucket
        self.name = name
        self.attempts = attempts
        self._seen: tuple[str, dict[str, Any] | None] | None = None  # (etag, value) as last read

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        """(value, etag); (None, None) where there is no object, (None, etag) where it is not a JSON object."""
        seen = self._seen
        got = self.bucket.get(self.name, if_none_match=seen[0] if seen else None)
        if got is None:
            self._seen = None
            return None, None
        body, etag = got
        if body is None and seen is not None:
            return seen[1], seen[0]
        try:
            value = json.loads(body or b"")
        except ValueError:
            value = None
        self._seen = (etag, value if isinstance(value, dict) else None)
        return self._seen[1], etag

    def update(self, change: Callable[[dict[str, Any]], dict[str, Any]],
               initial: Callable[[], dict[str, Any]]) -> None:
        """Apply ``change`` to the value (to ``initial()`` where there is none or it is unreadable)."""
        for _ in range(self.attempts):
            value, etag = self.read()
            new = change(value if value is not None else initial())
            if new == value:
                return
            body = json.dumps(new, sort_keys=True).encode()
            try:
                written = self.bucket.put(self.name, body, if_match=etag) if etag else \
                    self.bucket.put(self.name, body, if_none_match=True)
            except PreconditionFailed:
                continue
            self._seen = (written, new)
            return
        raise StoreUnavailable(f"{self.bucket.location.url(self.name)} kept changing through {self.attempts} "
                               "attempts to update it")


def _status(exc: Any) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
