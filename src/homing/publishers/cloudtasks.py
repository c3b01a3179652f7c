"""The Google Cloud Tasks publisher (``pip install homing[tasks]``): events that may wait.

Each event becomes one HTTP task that POSTs to the service's push endpoint at its time, with
Google's OIDC token for the service account and audience given, like a Pub/Sub push.

**The request shape.** The body is the same wrapped JSON envelope a Pub/Sub push carries
(``{"message": {...}, "subscription": ...}``, the queue's name standing for the subscription,
the task's id for the message id), ``Content-Type: application/json``; Cloud Tasks adds its
``X-CloudTasks-*`` headers. Not the unwrapped shape (data as the body, attributes as headers):
task headers are ASCII text whose names HTTP folds to lower case, and Cloud Tasks reserves or
rewrites some of them, while the signed attributes are UTF-8 and case-sensitive; in the JSON
body they arrive exactly as signed, and the push endpoint reads them with the parser it has, and
quarantines them as they came.

**Task names** derive from the event id, behind a hash prefix (``3f9a1c2e-<event id>``, as
Google advises: names that share a prefix, such as timestamps or sequential ids, slow task
creation). A create tried again after a lost answer, or an event the outbox publishes twice,
finds its name taken: ``ALREADY_EXISTS`` counts as published. Cloud Tasks keeps a name taken
for about an hour after its task ran or was deleted.

**Locally**, ``CLOUD_TASKS_EMULATOR_HOST=host:port`` (read when the publisher is made, as
google-cloud-pubsub reads ``PUBSUB_EMULATOR_HOST``) points it at an insecure gRPC endpoint with
no credentials: the local broker (``homing dev``) serves the Cloud Tasks API there.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import timedelta
from typing import Any, Final

from google.api_core import exceptions as gexc
from google.api_core import retry_async
from google.cloud import tasks_v2
from google.protobuf import duration_pb2, timestamp_pb2

from homing.errors import ConfigurationError, PublishFailed
from homing.ingress.wrapped import build_push
from homing.publishers.base import OutgoingMessage, Publisher

#: The environment variable that points the publisher at a local Cloud Tasks API.
EMULATOR_HOST: Final = "CLOUD_TASKS_EMULATOR_HOST"
#: Cloud Tasks' limits: how far ahead a task may be scheduled; its dispatch deadline.
MAX_SCHEDULE: Final = timedelta(days=30)
MIN_DISPATCH_DEADLINE: Final = timedelta(seconds=15)
MAX_DISPATCH_DEADLINE: Final = timedelta(minutes=30)
#: A task's body, at most.
MAX_BODY: Final = 1024 * 1024

_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,400}$")
_QUEUE = re.compile(r"^projects/[^/]+/locations/[^/]+/queues/[A-Za-z0-9-]{1,100}$")

#: Tried again until the publish's timeout: a named create is idempotent.
_TRANSIENT = retry_async.if_exception_type(
    gexc.Aborted,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.ResourceExhausted,
    gexc.ServiceUnavailable,
    gexc.Unknown,
)


def task_id(event_id: str) -> str:
    """The task id an event gets: a hash prefix, then the event id (or only the hash, for an
    event id Cloud Tasks would not take)."""
    digest = hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()
    if _TASK_ID.match(event_id):
        return f"{digest[:8]}-{event_id}"
    return digest


def queue_path(queue: str, *, project: str | None = None, location: str | None = None) -> str:
    """``projects/P/locations/L/queues/Q`` from a full path, or from an id, project and location."""
    if not queue.startswith("projects/"):
        if not project or not location:
            raise ConfigurationError(
                f"queue {queue!r} is not a full path, and no project and location are given "
                "(GOOGLE_CLOUD_PROJECT, HOMING_TASKS_LOCATION)"
            )
        queue = f"projects/{project}/locations/{location}/queues/{queue}"
    if not _QUEUE.match(queue):
        raise ConfigurationError(
            f"queue {queue!r} is not projects/P/locations/L/queues/Q (a queue id is letters, "
            "digits and hyphens, at most 100)"
        )
    return queue


def emulator_client(host: str) -> tasks_v2.CloudTasksAsyncClient:
    """A Cloud Tasks client on an insecure gRPC channel to ``host`` (``host:port``), with no
    credentials: for the local broker."""
    import grpc
    from google.cloud.tasks_v2.services.cloud_tasks.transports import (
        CloudTasksGrpcAsyncIOTransport,
    )

    channel = grpc.aio.insecure_channel(host)
    transport = CloudTasksGrpcAsyncIOTransport(channel=channel)  # the channel's: none
    return tasks_v2.CloudTasksAsyncClient(transport=transport)


class CloudTasksPublisher(Publisher):
    """Creates one Cloud Tasks HTTP task per event; returns once the queue has it.

    Args:
        queue: ``projects/P/locations/L/queues/Q``, or a queue id with ``project`` and
            ``location``.
        url: the push endpoint the task POSTs to (``https://SERVICE/events``).
        service_account: the account whose OIDC token each task carries (the push endpoint
            verifies it, as for Pub/Sub); ``None`` sends no token (local development).
        audience: the token's audience; default: ``url``.
        dispatch_deadline: how long a task's request may take, 15 s to 30 min (Cloud Tasks'
            default, 10 min, when not given); a Pub/Sub push has 10 min at most.
        timeout: seconds a publish may take, transient errors tried again, before it fails.
        client: a ``CloudTasksAsyncClient`` to use instead of making one (on the first publish:
            a gRPC channel belongs to the event loop it is used in).

    Example::

        tasks = CloudTasksPublisher(
            "projects/acme/locations/europe-west1/queues/homing",
            url="https://api.example.com/events",
            service_account="tasks@acme.iam.gserviceaccount.com",
        )
        homing = Homing(signer=signer, publisher=pubsub, transports={"tasks": tasks})
    """

    max_delay = MAX_SCHEDULE

    def __init__(
        self,
        queue: str,
        *,
        url: str,
        service_account: str | None,
        audience: str | None = None,
        project: str | None = None,
        location: str | None = None,
        dispatch_deadline: timedelta | None = None,
        timeout: float = 10.0,
        client: tasks_v2.CloudTasksAsyncClient | None = None,
    ) -> None:
        self.queue = queue_path(queue, project=project, location=location)
        if not url.startswith(("https://", "http://")):
            raise ConfigurationError(f"the task URL must be http(s)://..., not {url!r}")
        if dispatch_deadline is not None and not (
            MIN_DISPATCH_DEADLINE <= dispatch_deadline <= MAX_DISPATCH_DEADLINE
        ):
            raise ConfigurationError(
                "dispatch_deadline must be 15 s to 30 min (Cloud Tasks' bounds), not "
                f"{dispatch_deadline.total_seconds():g}s"
            )
        self.url = url
        self.service_account = service_account
        self.audience = audience or url
        self.dispatch_deadline = dispatch_deadline
        self.timeout = timeout
        self._client = client
        self._emulator = None if client is not None else os.environ.get(EMULATOR_HOST) or None
        self._retry = retry_async.AsyncRetry(
            predicate=_TRANSIENT, initial=0.05, maximum=2.0, multiplier=2.0, timeout=timeout
        )

    @property
    def client(self) -> tasks_v2.CloudTasksAsyncClient:
        """The Cloud Tasks client (made on first use)."""
        if self._client is None:
            self._client = (
                emulator_client(self._emulator)
                if self._emulator
                else tasks_v2.CloudTasksAsyncClient()
            )
        return self._client

    def task(self, message: OutgoingMessage) -> tasks_v2.Task:
        """The task ``message`` becomes (its name, request, token, time and deadline)."""
        name = f"{self.queue}/tasks/{task_id(message.event_id)}"
        body = build_push(
            message.data,
            message.attributes,
            message_id=name.rsplit("/", 1)[1],
            subscription=self.queue,
            ordering_key=message.ordering_key,
        )
        if len(body) > MAX_BODY:
            raise PublishFailed(
                f"the task body is {len(body)} bytes; Cloud Tasks takes at most {MAX_BODY}",
                event_type=message.event_type,
                event_id=message.event_id,
            )
        request: dict[str, Any] = {
            "url": self.url,
            "http_method": tasks_v2.HttpMethod.POST,
            "headers": {"Content-Type": "application/json"},
            "body": body,
        }
        if self.service_account:
            request["oidc_token"] = tasks_v2.OidcToken(
                service_account_email=self.service_account, audience=self.audience
            )
        task: dict[str, Any] = {"name": name, "http_request": tasks_v2.HttpRequest(**request)}
        if message.deliver_at is not None:
            when = timestamp_pb2.Timestamp()
            when.FromDatetime(message.deliver_at)
            task["schedule_time"] = when
        if self.dispatch_deadline is not None:
            deadline = duration_pb2.Duration()
            deadline.FromTimedelta(self.dispatch_deadline)
            task["dispatch_deadline"] = deadline
        return tasks_v2.Task(**task)

    async def _send(self, message: OutgoingMessage) -> str:
        task = self.task(message)
        try:
            created = await self.client.create_task(
                parent=self.queue, task=task, retry=self._retry, timeout=self.timeout
            )
        except gexc.AlreadyExists:
            return str(task.name)  # created before: by an attempt whose answer was lost
        except gexc.GoogleAPICallError as exc:
            raise PublishFailed(
                f"Cloud Tasks refused the task in {self.queue}: {type(exc).__name__}: "
                f"{exc.message}",
                event_type=message.event_type,
                event_id=message.event_id,
            ) from exc
        except gexc.RetryError as exc:
            raise PublishFailed(
                f"Cloud Tasks did not confirm the task in {self.queue} within {self.timeout}s",
                event_type=message.event_type,
                event_id=message.event_id,
            ) from exc
        return str(created.name)

    async def aclose(self) -> None:
        """Close the client's channel; later publishes fail."""
        if self._closed:
            return
        await super().aclose()
        if self._client is not None:
            transport: Any = self._client.transport
            await transport.close()
