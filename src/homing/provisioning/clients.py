"""The Google clients ``provision`` and ``check`` talk through, imported only when they run: each
call bounded in time, each failure one line."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from homing.errors import HomingError

if TYPE_CHECKING:
    import requests

#: Every admin call gets this many seconds per attempt ...
CALL_TIMEOUT = 10.0
#: ... and an unreachable endpoint is retried for at most this long.
RETRY_DEADLINE = 15.0

_CLOUD_RUN = "https://run.googleapis.com/v2"


class ProvisioningFailed(HomingError):
    """Raised when Pub/Sub refuses, cannot be reached, or cannot be brought to the plan."""


def _project_number(project: str) -> str:
    """The number of ``project``, from Cloud Resource Manager (the service agent is named by
    it)."""
    what = f"looking up the number of project {project} (to name its Pub/Sub service agent)"
    with _calling(what):
        session = _authorized_session()
        url = f"https://cloudresourcemanager.googleapis.com/v1/projects/{project}"
        try:
            response = session.get(url, timeout=CALL_TIMEOUT)
        except OSError as exc:  # requests' errors are OSErrors
            raise ProvisioningFailed(f"{what}: {_line(exc)}") from exc
    if response.status_code != 200:
        raise ProvisioningFailed(
            f"{what}: {response.status_code} {_line(response.text)[:300]}; apply the IAM "
            "bindings with the commands from `homing plan` instead"
        )
    return str(response.json()["projectNumber"])


class CloudRunIamClient:
    """The IAM policies of Cloud Run services, through the Cloud Run Admin API (v2, REST), with
    the ``get_iam_policy`` / ``set_iam_policy`` calls of the Pub/Sub admin clients: a binding on a
    service is applied and compared as one on a topic is. google-cloud-pubsub has no Cloud Run
    client.

    ``session`` sends the requests and authorizes them; by default, at the first call,
    google-auth's ``AuthorizedSession`` on Application Default Credentials. Each request has
    ``CALL_TIMEOUT`` seconds and is not retried: ``provision`` is idempotent, run it again.
    """

    def __init__(self, session: requests.Session | None = None) -> None:
        self._session = session

    def get_iam_policy(self, *, request: Mapping[str, Any], **_options: Any) -> Any:
        """The policy of service ``request["resource"]`` (``projects/P/locations/R/services/S``)
        as an IAM ``Policy`` message, version 3 (conditional bindings as they are)."""
        resource = request["resource"]
        return self._send(
            "GET",
            f"{resource}:getIamPolicy",
            f"reading the IAM policy of Cloud Run service {resource}",
            params={"options.requestedPolicyVersion": "3"},
        )

    def set_iam_policy(self, *, request: Mapping[str, Any], **_options: Any) -> Any:
        """Write ``request["policy"]`` (with the etag it was read with) to the service."""
        from google.protobuf import json_format

        resource = request["resource"]
        return self._send(
            "POST",
            f"{resource}:setIamPolicy",
            f"setting the IAM policy of Cloud Run service {resource}",
            json={"policy": json_format.MessageToDict(request["policy"])},
        )

    def _send(self, method: str, path: str, what: str, **arguments: Any) -> Any:
        from google.iam.v1 import policy_pb2  # type: ignore[import-untyped]
        from google.protobuf import json_format

        with _calling(what):  # credentials that cannot load or refresh
            if self._session is None:
                self._session = _authorized_session()
            try:
                response = self._session.request(
                    method, f"{_CLOUD_RUN}/{path}", timeout=CALL_TIMEOUT, **arguments
                )
            except OSError as exc:  # requests' errors are OSErrors
                raise ProvisioningFailed(
                    f"{what}: cannot reach run.googleapis.com: {_line(exc)}"
                ) from exc
        if response.status_code != 200:
            hint = {
                403: "; the caller needs roles/run.admin on the service (run.services."
                "getIamPolicy and setIamPolicy)",
                404: "; is the service deployed, in that project and region?",
            }.get(response.status_code, "")
            raise ProvisioningFailed(
                f"{what}: {response.status_code} {_error_message(response)}{hint}"
            )
        return json_format.ParseDict(
            response.json(), policy_pb2.Policy(), ignore_unknown_fields=True
        )


def _authorized_session() -> requests.Session:
    """A requests session authorized by Application Default Credentials."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    return AuthorizedSession(credentials)  # type: ignore[no-untyped-call]


def _error_message(response: requests.Response) -> str:
    """The message of a Google API error body, or the start of whatever came instead."""
    try:
        return _line(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return _line(response.text)[:300]


def _call() -> dict[str, Any]:
    """Per-call options: a short timeout, and a retry only while Pub/Sub is unavailable."""
    from google.api_core import exceptions as api
    from google.api_core.retry import Retry, if_exception_type

    return {
        "timeout": CALL_TIMEOUT,
        "retry": Retry(predicate=if_exception_type(api.ServiceUnavailable), timeout=RETRY_DEADLINE),
    }


@contextmanager
def _clients() -> Iterator[tuple[Any, Any]]:
    from google.cloud import pubsub_v1

    with _calling("connecting to Pub/Sub"):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
    try:
        yield publisher, subscriber
    finally:
        subscriber.close()
        publisher.transport.close()


#: The environment variable that points the Cloud Tasks client at the local broker.
TASKS_EMULATOR_HOST = "CLOUD_TASKS_EMULATOR_HOST"


@contextmanager
def _tasks_client() -> Iterator[Any]:
    """A Cloud Tasks admin client: on an insecure channel to ``CLOUD_TASKS_EMULATOR_HOST`` (the
    local broker) when it is set."""
    from google.cloud import tasks_v2

    host = os.environ.get("CLOUD_TASKS_EMULATOR_HOST")
    with _calling("connecting to Cloud Tasks", service="tasks"):
        if host:
            import grpc
            from google.cloud.tasks_v2.services.cloud_tasks.transports import (
                CloudTasksGrpcTransport,
            )

            transport = CloudTasksGrpcTransport(channel=grpc.insecure_channel(host))
            client = tasks_v2.CloudTasksClient(transport=transport)
        else:
            client = tasks_v2.CloudTasksClient()
    try:
        yield client
    finally:
        client.transport.close()  # type: ignore[no-untyped-call]


def _target(service: str = "pubsub") -> str:
    if service == "tasks":
        host = os.environ.get("CLOUD_TASKS_EMULATOR_HOST")
        name = f"the local broker at {host} ({TASKS_EMULATOR_HOST})"
        return name if host else "cloudtasks.googleapis.com"
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    return f"the emulator at {host} (PUBSUB_EMULATOR_HOST)" if host else "pubsub.googleapis.com"


_ROLES = {
    "pubsub": "roles/pubsub.editor in the project (roles/pubsub.admin for IAM bindings)",
    "tasks": "roles/cloudtasks.queueAdmin in the project (roles/cloudtasks.admin for IAM bindings)",
}


@contextmanager
def _calling(what: str, *, service: str = "pubsub") -> Iterator[None]:
    """Translate client errors into one-line ProvisioningFailed, keeping the cause."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    try:
        yield
    except api.RetryError as exc:
        cause = f": {_line(exc.cause)}" if exc.cause else ""
        raise ProvisioningFailed(f"{what}: cannot reach {_target(service)}{cause}") from exc
    except (api.ServiceUnavailable, api.DeadlineExceeded) as exc:
        raise ProvisioningFailed(f"{what}: cannot reach {_target(service)}: {_line(exc)}") from exc
    except api.PermissionDenied as exc:
        raise ProvisioningFailed(
            f"{what}: permission denied ({_line(exc.message)}); the caller needs " + _ROLES[service]
        ) from exc
    except api.NotFound as exc:
        raise ProvisioningFailed(
            f"{what}: not found ({_line(exc.message)}); is the project right?"
        ) from exc
    except api.GoogleAPICallError as exc:
        raise ProvisioningFailed(f"{what}: {_line(exc)}") from exc
    except auth.GoogleAuthError as exc:
        raise ProvisioningFailed(
            f"{what}: no usable Google credentials ({_line(exc)}); run `gcloud auth "
            "application-default login`, or set "
            + ("CLOUD_TASKS_EMULATOR_HOST" if service == "tasks" else "PUBSUB_EMULATOR_HOST")
            + " to use the emulator"
        ) from exc


def _line(value: object) -> str:
    return " ".join(str(value).split())
