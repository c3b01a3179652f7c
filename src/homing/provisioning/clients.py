"""The Google clients ``provision`` and ``check`` talk through, imported only when they run: each
call bounded in time, each failure one line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from homing.errors import HomingError

#: Every admin call gets this many seconds per attempt ...
CALL_TIMEOUT = 10.0
#: ... and an unreachable endpoint is retried for at most this long.
RETRY_DEADLINE = 15.0


class ProvisioningFailed(HomingError):
    """Raised when Pub/Sub refuses, cannot be reached, or cannot be brought to the plan."""


def _project_number(project: str) -> str:
    """The number of ``project``, from Cloud Resource Manager (the service agent is named by
    it)."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    what = f"looking up the number of project {project} (to name its Pub/Sub service agent)"
    with _calling(what):
        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        url = f"https://cloudresourcemanager.googleapis.com/v1/projects/{project}"
        try:
            session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
            response = session.get(url, timeout=CALL_TIMEOUT)
        except OSError as exc:  # requests' errors are OSErrors
            raise ProvisioningFailed(f"{what}: {_line(exc)}") from exc
    if response.status_code != 200:
        raise ProvisioningFailed(
            f"{what}: {response.status_code} {_line(response.text)[:300]}; apply the IAM "
            "bindings with the commands from `homing plan` instead"
        )
    return str(response.json()["projectNumber"])


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


def _target() -> str:
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    return f"the emulator at {host} (PUBSUB_EMULATOR_HOST)" if host else "pubsub.googleapis.com"


@contextmanager
def _calling(what: str) -> Iterator[None]:
    """Translate client errors into one-line ProvisioningFailed, keeping the cause."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    try:
        yield
    except api.RetryError as exc:
        cause = f": {_line(exc.cause)}" if exc.cause else ""
        raise ProvisioningFailed(f"{what}: cannot reach {_target()}{cause}") from exc
    except (api.ServiceUnavailable, api.DeadlineExceeded) as exc:
        raise ProvisioningFailed(f"{what}: cannot reach {_target()}: {_line(exc)}") from exc
    except api.PermissionDenied as exc:
        raise ProvisioningFailed(
            f"{what}: permission denied ({_line(exc.message)}); the caller needs "
            "roles/pubsub.editor in the project (roles/pubsub.admin for IAM bindings)"
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
            "application-default login`, or set PUBSUB_EMULATOR_HOST to use the emulator"
        ) from exc


def _line(value: object) -> str:
    return " ".join(str(value).split())
