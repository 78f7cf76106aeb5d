"""Data contributions: a file or JSON rows that a contributor submits for a model.

The bytes go to the "contributions" storage (S3 when a bucket is configured, local files
otherwise) under a key of their own. Order of work: the upload is checked and hashed where Django
left it (in memory when small, a temporary file otherwise, read in chunks), a duplicate is
refused, the object is written, then its row and audit entry in one transaction. If the object
cannot be written there is no row; if the row cannot be written the object is deleted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile, UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from authkeys.principals import Caller
from hokusai_site.errors import ApplicationError
from registry import audit
from registry.models import Contribution, Model

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
JSON_LINES = "application/jsonl"
OCTET_STREAM = "application/octet-stream"
# A media type as Django's multipart parser leaves it (parameters split off); a client's
# Content-Type that is anything else is stored as OCTET_STREAM.
MEDIA_TYPE = re.compile(r"\A[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\Z")
# The file name's suffix is kept on the stored key (people and tools see the kind of file).
SUFFIX = re.compile(r"\A\.[A-Za-z0-9]{1,10}\Z")


@dataclass(frozen=True)
class Content:
    """One contribution's bytes, within the size limit and hashed, ready to store."""

    file: UploadedFile
    size: int
    sha256: str
    content_type: str
    original_name: str


def content_from_upload(upload: UploadedFile) -> Content:
    content_type = (upload.content_type or "").lower()
    upload.content_type = content_type if MEDIA_TYPE.fullmatch(content_type) else OCTET_STREAM
    return _checked(upload, original_name=upload.name or "")


def content_from_rows(rows: list[dict]) -> Content:
    """Rows as JSON Lines: one compact JSON object per line, in the order given."""
    lines = (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows)
    file = SimpleUploadedFile("rows.jsonl", "".join(lines).encode(), content_type=JSON_LINES)
    return _checked(file, original_name="")


def _checked(file: UploadedFile, *, original_name: str) -> Content:
    """`file.content_type` becomes the stored object's (S3 storage reads it from the file)."""
    limit = settings.HOKUSAI_CONTRIBUTION_MAX_BYTES
    if file.size > limit:
        raise ApplicationError(
            "request_too_large",
            f"The contribution is {file.size} bytes; this route accepts at most {limit}.",
            status=413,
        )
    digest = hashlib.sha256()
    for chunk in file.chunks(CHUNK_BYTES):
        digest.update(chunk)
    return Content(
        file=file,
        size=file.size,
        sha256=digest.hexdigest(),
        content_type=file.content_type,
        original_name=original_name,
    )


def contribution_create(
    *,
    actor: Caller,
    model: Model,
    content: Content,
    on_recorded: Callable[[Contribution], None] | None = None,
) -> Contribution:
    """Stores `content` for `model` and records it; 409 naming the earlier contribution when
    the same bytes were contributed to this model before (by anyone). `on_recorded` runs inside
    the transaction that records it (to store an idempotent answer with it). No transaction is
    open while the bytes are stored."""
    _refuse_duplicate(model, content.sha256)
    stored = _store(_storage_name(model, content.file.name or ""), content.file)
    try:
        with transaction.atomic():
            contribution = Contribution.objects.create(
                model=model,
                contributor=actor.identity,
                contributor_user_id=actor.user_id,
                contributor_identity_id=actor.identity_id,
                storage_name=stored,
                size=content.size,
                sha256=content.sha256,
                content_type=content.content_type,
                original_name=content.original_name,
            )
            audit.contribution_received(actor=actor, contribution=contribution)
            if on_recorded is not None:
                on_recorded(contribution)
    except Exception as exc:
        _discard(stored)
        if isinstance(exc, IntegrityError):
            # A twin request with the same bytes committed between our check and our row.
            _refuse_duplicate(model, content.sha256)
        raise
    return contribution


def contributions_of(*, actor: Caller, model: Model) -> QuerySet[Contribution]:
    """`actor`'s own contributions to `model`, newest first; staff see everyone's."""
    found = Contribution.objects.filter(model=model).select_related("model")
    if not actor.is_staff:
        found = found.filter(
            contributor_user_id=actor.user_id, contributor_identity_id=actor.identity_id
        )
    return found.order_by("-created_at", "-id")


def _refuse_duplicate(model: Model, sha256: str) -> None:
    earlier = Contribution.objects.filter(model=model, sha256=sha256).values_list("pk").first()
    if earlier is not None:
        raise ApplicationError(
            "duplicate_contribution",
            f"These bytes were contributed to {model.model_id} already, "
            f"as contribution {earlier[0]}.",
            status=409,
            extra={"contribution_id": earlier[0]},
        )


# --- The storage ------------------------------------------------------------------------------


def _storage_name(model: Model, file_name: str) -> str:
    """contributions/<model_id>/<random hex><suffix>: new for every upload, so a failed attempt
    can delete its object without touching anyone else's, and no client text picks the path."""
    suffix = PurePosixPath(file_name).suffix
    return f"contributions/{model.model_id}/{uuid.uuid4().hex}" + (
        suffix.lower() if SUFFIX.fullmatch(suffix) else ""
    )


def _store(name: str, file: File) -> str:
    try:
        return storages["contributions"].save(name, file)
    except ClientError as exc:
        logger.warning("The contribution storage refused %s: %s", name, exc)
        raise ApplicationError(
            "storage_error", "The storage refused the contribution; nothing was kept.", status=502
        ) from exc
    except (BotoCoreError, OSError) as exc:
        logger.warning("The contribution storage failed to store %s: %s", name, exc)
        raise ApplicationError(
            "storage_unavailable",
            "The storage is not reachable; nothing was kept. Retry later.",
            status=503,
        ) from exc


def _discard(name: str) -> None:
    """Deletes an object whose row was not written; a failure here must not hide that one."""
    try:
        storages["contributions"].delete(name)
    except (BotoCoreError, ClientError, OSError):
        logger.exception("Contribution object %s has no row and could not be deleted", name)
