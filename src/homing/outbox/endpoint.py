"""The outbox's flush route for a scheduler (Cloud Scheduler): an ASGI app that flushes the
outbox for a caller with a token or an OIDC identity."""

from __future__ import annotations

import hmac
import logging

from homing.auth import OIDCVerifier
from homing.errors import AuthenticationFailed, ConfigurationError, PushRejected, StoreError
from homing.http import (
    Answer,
    Receive,
    Scope,
    Send,
    answer,
    json_answer,
    method_not_allowed,
    send_answer,
)
from homing.outbox.staging import SQLOutbox
from homing.outcome import PushResult

logger = logging.getLogger("homing.outbox")

_NOT_ALLOWED = method_not_allowed("POST")
_STORE_DOWN = answer(PushResult(503, "store_unavailable", retry_after=10))


class FlushEndpoint:
    """``POST``: flush the outbox; for Cloud Scheduler. Refuses callers without credentials.

    Accepts ``Authorization: Bearer <token>`` where the token is ``token`` (compared in constant
    time) or an OIDC token that ``oidc`` accepts (Cloud Scheduler's OIDC token for its service
    account). Answers 200 with the counts, or 503 when some events could not be published.
    """

    def __init__(
        self,
        outbox: SQLOutbox,
        *,
        token: str | None = None,
        oidc: OIDCVerifier | None = None,
        limit: int = 500,
    ) -> None:
        if not token and oidc is None:
            raise ConfigurationError("the outbox flush route needs a token or an OIDC verifier")
        self.outbox = outbox
        if token and len(token.encode()) < 16:
            raise ConfigurationError("the outbox flush token is shorter than 16 bytes")
        self._token = token.encode() if token else None
        self._oidc = oidc
        self.limit = limit

    async def _authorize(self, authorization: str | None) -> None:
        scheme, _, credentials = (authorization or "").partition(" ")
        if self._token is not None and scheme.lower() == "bearer":
            if hmac.compare_digest(credentials.strip().encode(), self._token):
                return
            if self._oidc is None:
                raise AuthenticationFailed("the flush token is not valid")
        if self._oidc is None:
            raise AuthenticationFailed("the flush route needs 'Authorization: Bearer <token>'")
        await self._oidc.verify(authorization)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await send_answer(send, _NOT_ALLOWED)
            return
        authorization = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
        )
        await send_answer(send, await self._flush(authorization))

    async def _flush(self, authorization: str | None) -> Answer:
        try:
            await self._authorize(authorization)
        except PushRejected as exc:
            return answer(PushResult(exc.status_code, exc.code, exc.detail))
        try:
            report = await self.outbox.flush(limit=self.limit)
            waiting = await self.outbox.count()
        except StoreError as exc:
            logger.error("outbox flush: %s", exc)
            return _STORE_DOWN
        counts = {"published": report.published, "failed": report.failed, "pending": waiting}
        return json_answer(503 if report.failed else 200, counts)
