"""The transactional outbox: an event is written in the same database transaction as the state
change that caused it, so it can never be lost between the database and the broker.

::

    async with sessions.begin() as session:
        user.name = new_name
        staged = await outbox.stage(session, homing.sign(UserNameChanged(...)))
    await outbox.send(staged)   # published now when the broker answers; else it waits

A staged event that could not be sent stays in ``homing_outbox`` until :meth:`SQLOutbox.flush`
publishes it: from the authenticated HTTP route (Cloud Scheduler), the ``homing outbox flush``
command, or the next ``send``. Its event id never changes, so a republished event is recognised
downstream as the same event.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from homing.auth import OIDCVerifier
from homing.errors import AuthenticationFailed, ConfigurationError, PublishFailed, PushRejected
from homing.publishers.base import OutgoingMessage, Publisher
from homing.stores.sql import outbox as outbox_table

logger = logging.getLogger("homing.outbox")


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What a flush did."""

    published: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class SQLOutbox:
    """Events waiting for the broker, in the ``homing_outbox`` table of ``engine``'s database."""

    def __init__(self, engine: AsyncEngine, publisher: Publisher, *, backlog_limit: int = 50):
        self.engine = engine
        self.publisher = publisher
        self.backlog_limit = backlog_limit
        self._backlog = False

    async def stage(
        self, transaction: AsyncSession | AsyncConnection, message: OutgoingMessage
    ) -> OutgoingMessage:
        """Write ``message`` to the outbox inside the caller's open transaction."""
        await transaction.execute(
            outbox_table.insert().values(
                event_id=message.event_id,
                event_type=message.event_type,
                data=message.data,
                attributes=orjson.dumps(dict(message.attributes)).decode(),
                ordering_key=message.ordering_key,
                created_at=datetime.now(UTC),
                attempts=0,
            )
        )
        return message

    async def send(self, message: OutgoingMessage) -> bool:
        """Publish a staged message whose transaction has committed; ``True`` once published.

        ``False`` when it could not be published now — the broker or the database failed; it
        waits in the outbox and the reason is logged — or when there is nothing to send (its
        transaction rolled back, or a flush already sent it). Never raises for those.

        After a send succeeds following earlier failures, up to ``backlog_limit`` older waiting
        events are published too, so a backlog drains once the broker is back even before a
        scheduler calls :meth:`flush`.
        """
        try:
            sent = await self._publish_row(message)
        except PublishFailed as exc:
            logger.warning("event %s waits in the outbox: %s", message.event_id, exc)
            self._backlog = True
            await self._record_failure(message.event_id, str(exc))
            return False
        except SQLAlchemyError as exc:
            logger.error(
                "event %s waits in the outbox: the database failed: %s", message.event_id, exc
            )
            self._backlog = True
            return False
        if sent and self._backlog:
            self._backlog = False
            try:
                await self.flush(limit=self.backlog_limit)
            except SQLAlchemyError:
                logger.exception("draining the outbox backlog failed")
                self._backlog = True
        return sent

    async def _publish_row(self, message: OutgoingMessage) -> bool:
        # Nothing is held while publishing (a publish may take seconds, and on SQLite an open
        # write would stop every other request). Two senders may therefore both publish one
        # event; it keeps its event id, so the push endpoint runs it once.
        table = outbox_table.c
        async with self.engine.connect() as connection:
            staged = await connection.scalar(
                select(table.event_id).where(table.event_id == message.event_id)
            )
        if staged is None:  # rolled back, or sent already
            return False
        await self.publisher.publish(message)
        async with self.engine.begin() as connection:
            await connection.execute(delete(outbox_table).where(table.event_id == message.event_id))
        return True

    async def pending(self, *, limit: int = 100) -> list[OutgoingMessage]:
        """The oldest events waiting to be published."""
        query = select(outbox_table).order_by(outbox_table.c.created_at).limit(limit)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [
            OutgoingMessage(
                data=bytes(row["data"]),
                attributes=orjson.loads(row["attributes"]),
                event_type=row["event_type"],
                event_id=row["event_id"],
                ordering_key=row["ordering_key"],
            )
            for row in rows
        ]

    async def flush(self, *, limit: int = 500) -> FlushReport:
        """Publish up to ``limit`` waiting events, oldest first."""
        published = failed = 0
        errors: list[str] = []
        for message in await self.pending(limit=limit):
            try:
                if not await self._publish_row(message):
                    continue  # sent by someone else meanwhile
            except PublishFailed as exc:
                failed += 1
                errors.append(str(exc))
                await self._record_failure(message.event_id, str(exc))
                continue
            published += 1
        if published or failed:
            logger.info("outbox flush: %d published, %d failed", published, failed)
        return FlushReport(published=published, failed=failed, errors=errors)

    async def count(self) -> int:
        """How many events wait."""
        async with self.engine.connect() as connection:
            return int(await connection.scalar(select(func.count()).select_from(outbox_table)) or 0)

    async def _record_failure(self, event_id: str, error: str) -> None:
        try:
            async with self.engine.begin() as connection:
                await connection.execute(
                    update(outbox_table)
                    .where(outbox_table.c.event_id == event_id)
                    .values(attempts=outbox_table.c.attempts + 1, last_error=error[:2000])
                )
        except Exception:
            logger.exception("could not record the failed publish of %s", event_id)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


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
        authorization = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
        )
        status: int
        payload: dict[str, object]
        if scope["method"] != "POST":
            status, payload = 405, {"outcome": "method_not_allowed"}
        else:
            try:
                await self._authorize(authorization)
            except PushRejected as exc:
                status, payload = exc.status_code, {"outcome": exc.code, "detail": exc.detail}
            else:
                report = await self.outbox.flush(limit=self.limit)
                status = 503 if report.failed else 200
                payload = {
                    "published": report.published,
                    "failed": report.failed,
                    "pending": await self.outbox.count(),
                }
        body = orjson.dumps(payload)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
