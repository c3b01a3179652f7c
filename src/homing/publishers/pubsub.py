"""The Google Cloud Pub/Sub publisher (``pip install homing[pubsub]``).

One ``PublisherClient`` per process, made when the app is built and stopped by its lifespan,
never one per request. Batching is set for request-scoped publishing: a request publishes one
event and must wait for it (Cloud Run takes the CPU once the response is sent), so the client's
default 10 ms batch wait would be added to every request; here a batch is sent at once.
``PUBSUB_EMULATOR_HOST`` is honoured by the client itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from concurrent.futures import Future

from google.api_core import exceptions as gexc
from google.api_core import retry as retries
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.publisher.exceptions import PublishToPausedOrderingKeyException

from homing.errors import ConfigurationError, PublishFailed
from homing.publishers.base import OutgoingMessage, Publisher

logger = logging.getLogger("homing.publishers.pubsub")

#: homing's signed trace context, and google-cloud-pubsub's attribute for the same.
_TRACEPARENT = "homing-traceparent"
_CLIENT_TRACEPARENT = "googclient_traceparent"

#: Sent at once: one event per request, awaited before the response.
REQUEST_SCOPED_BATCHING = pubsub_v1.types.BatchSettings(
    max_latency=0, max_messages=100, max_bytes=1_000_000
)

#: Errors tried again until the publish's timeout, after a random pause of up to a backoff
#: that doubles from the first to the last.
_TRANSIENT = retries.if_exception_type(
    gexc.Aborted,
    gexc.Cancelled,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.ResourceExhausted,
    gexc.ServiceUnavailable,
    gexc.Unknown,
    PublishToPausedOrderingKeyException,
)
_FIRST_BACKOFF = 0.05
_LAST_BACKOFF = 2.0


def _outcome_dropped(attempt: asyncio.Future[str]) -> None:
    """Marks a timed-out attempt's outcome as seen (asyncio logs an error never retrieved)."""
    if not attempt.cancelled():
        attempt.exception()


def topic_path(topic: str, project: str | None) -> str:
    """``projects/P/topics/T`` from a full path, or from an id and a project."""
    if topic.startswith("projects/"):
        return topic
    if not project:
        raise ConfigurationError(
            f"topic {topic!r} is not a full path and no project is set (GOOGLE_CLOUD_PROJECT)"
        )
    return f"projects/{project}/topics/{topic}"


class PubSubPublisher(Publisher):
    """Publishes to a Pub/Sub topic and returns once Pub/Sub has the message.

    Args:
        topic: a topic id (with ``project``) or ``projects/P/topics/T``.
        project: the Google Cloud project.
        timeout: seconds a publish may take, retries included, before it fails.
        shutdown_timeout: how long :meth:`aclose` waits for publishes under way (Cloud Run
            gives about 10 seconds between SIGTERM and SIGKILL).
        client: a ``PublisherClient`` to use instead of making one.

    Transient errors (unavailable, deadline exceeded and the like) are tried again, after a
    jittered backoff, until ``timeout``. A publish that fails or times out raises
    :class:`~homing.errors.PublishFailed` with the event type and id, and nothing of it goes on
    trying in the background. An attempt that timed out may still have reached Pub/Sub; the
    event id lets the endpoint recognise it if it is published again (from the outbox, say).
    Publishes of one ordering key that await one another keep their order; ones under way at
    the same time (two requests) are tried again each on its own after a failure, so their
    order is whichever attempt Pub/Sub takes first.
    """

    def __init__(
        self,
        topic: str,
        *,
        project: str | None = None,
        timeout: float = 10.0,
        shutdown_timeout: float = 8.0,
        client: pubsub_v1.PublisherClient | None = None,
    ) -> None:
        self.topic = topic_path(topic, project)
        self.timeout = timeout
        self.shutdown_timeout = shutdown_timeout
        self._client = client or pubsub_v1.PublisherClient(
            batch_settings=REQUEST_SCOPED_BATCHING,
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True),
        )
        self._in_flight: set[asyncio.Future[str]] = set()

    async def _send(self, message: OutgoingMessage) -> str:
        attributes = message.attributes
        traceparent = attributes.get(_TRACEPARENT)
        if traceparent is not None and not getattr(self._client, "open_telemetry_enabled", False):
            # Subscribers using google-cloud-pubsub's tracing continue the trace from here (with
            # its tracing on, the client writes this attribute itself). It is not signed.
            attributes = {**attributes, _CLIENT_TRACEPARENT: traceparent}
        ordering_key = message.ordering_key or ""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        backoff = _FIRST_BACKOFF
        while True:
            # One attempt per client call (retry=None), bounded by what is left of the timeout,
            # and the retries here: given a retry, a client with message ordering on retries
            # for 2**32 seconds, so a publish reported as failed would go on in a thread of the
            # client's, a thread per failed batch for as long as Pub/Sub is unreachable.
            left = deadline - loop.time()
            try:
                sent: Future[str] = self._client.publish(
                    self.topic,
                    message.data,
                    ordering_key=ordering_key,
                    retry=None,
                    timeout=left,
                    **attributes,
                )
            except AssertionError as exc:
                # google-cloud-pubsub: the previous attempt's batch failed and the client's
                # commit thread has not yet replaced it ("Publish after stop() or publish
                # error"), which a loaded CPU makes likely. Nothing was sent; a later attempt
                # gets a new batch.
                failure: Exception = exc
            except Exception as exc:  # nothing was sent: too large, a stopped client
                raise self._failed(message, f"refused the publish to {self.topic}", exc) from exc
            else:
                waiting = asyncio.wrap_future(sent)
                self._in_flight.add(waiting)
                try:
                    return await asyncio.wait_for(asyncio.shield(waiting), left)
                except TimeoutError:
                    # The attempt ends by its own deadline, now or soon; its outcome is not
                    # needed.
                    waiting.add_done_callback(_outcome_dropped)
                    raise self._failed(message, self._not_confirmed, None) from None
                except Exception as exc:
                    if ordering_key:
                        self._resume(ordering_key)
                    # A RuntimeError here is a batch the client cancelled: an earlier publish
                    # of the key failed (or the client stopped, which the next attempt finds).
                    if not (_TRANSIENT(exc) or isinstance(exc, RuntimeError)):
                        raise self._failed(
                            message, f"refused the publish to {self.topic}", exc
                        ) from exc
                    failure = exc
                finally:
                    self._in_flight.discard(waiting)
            pause = random.uniform(0, backoff)  # noqa: S311 - jitter, not a secret
            if loop.time() + pause >= deadline:
                raise self._failed(message, self._not_confirmed, failure) from failure
            await asyncio.sleep(pause)
            backoff = min(backoff * 2, _LAST_BACKOFF)

    @property
    def _not_confirmed(self) -> str:
        return f"did not confirm the publish to {self.topic} within {self.timeout}s"

    @staticmethod
    def _failed(message: OutgoingMessage, what: str, cause: Exception | None) -> PublishFailed:
        last = "" if cause is None else f": {type(cause).__name__}: {cause}"
        return PublishFailed(
            f"Pub/Sub {what}{last}", event_type=message.event_type, event_id=message.event_id
        )

    def _resume(self, ordering_key: str) -> None:
        """Take up a key the client paused after a failure (it fails what it holds for the key
        with PublishToPausedOrderingKeyException, and refuses more until resumed)."""
        # RuntimeError: another publish of the key took it up already, or the client stopped.
        with contextlib.suppress(RuntimeError):
            self._client.resume_publish(self.topic, ordering_key)

    async def aclose(self) -> None:
        """Send what is batched, wait for publishes under way, and stop the client."""
        if self._closed:
            return
        await super().aclose()
        self._client.stop()
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=self.shutdown_timeout)
            if pending:
                logger.error(
                    "%d publish(es) to %s unconfirmed at shutdown", len(pending), self.topic
                )
