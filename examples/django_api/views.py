"""The article's API, as users_api serves it: same paths, statuses and JSON."""

from __future__ import annotations

from typing import Any

import orjson
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from django_api.events import UserNameChanged
from django_api.models import Notification, User
from django_api.tasks import welcome
from homing.django import outbox


def _user(user: User) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "email": user.email}


def _invalid(location: str, message: str) -> JsonResponse:
    # FastAPI's shape for a body that does not validate (422), as users_api answers.
    return JsonResponse(
        {"detail": [{"loc": ["body", location], "msg": message, "type": "value_error"}]},
        status=422,
    )


def _not_found(what: str) -> JsonResponse:
    return JsonResponse({"detail": what}, status=404)


def _body(request: HttpRequest) -> dict[str, Any] | None:
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _name(body: dict[str, Any]) -> str | None:
    name = body.get("name")
    return name if isinstance(name, str) and 1 <= len(name) <= 200 else None


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@csrf_exempt
@require_POST
def create_user(request: HttpRequest) -> JsonResponse:
    body = _body(request)
    if body is None:
        return _invalid("body", "a JSON object is required")
    name, email = _name(body), body.get("email")
    if name is None:
        return _invalid("name", "1 to 200 characters")
    try:
        validate_email(email)
    except ValidationError:
        return _invalid("email", "value is not a valid email address")
    with transaction.atomic():
        user = User.objects.create(name=name, email=email)
        welcome.enqueue(user.id)  # runs by push once this block commits
    return JsonResponse(_user(user), status=201)


@require_GET
def get_user(request: HttpRequest, user_id: int) -> JsonResponse:
    user = User.objects.filter(id=user_id).first()
    if user is None:
        return _not_found(f"user {user_id} not found")
    return JsonResponse(_user(user))


@csrf_exempt
@require_POST
def change_name(request: HttpRequest) -> HttpResponse:
    body = _body(request)
    if body is None:
        return _invalid("body", "a JSON object is required")
    user_id, name = body.get("user_id"), _name(body)
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        return _invalid("user_id", "an integer is required")
    if name is None:
        return _invalid("name", "1 to 200 characters")
    with transaction.atomic():
        user = User.objects.select_for_update().filter(id=user_id).first()
        if user is None:
            return _not_found(f"user {user_id} not found")
        old_name, user.name = user.name, name
        user.save(update_fields=["name"])
        # Staged in this transaction; published when it commits, before the response.
        event_id = outbox.publish(
            UserNameChanged(user_id=user.id, old_name=old_name, new_name=name)
        )
    response = JsonResponse(_user(user))
    response["x-event-id"] = event_id
    response["x-event-status"] = "pending" if _waiting(event_id) else "published"
    return response


def _waiting(event_id: str) -> bool:
    from homing.django.models import OutboxEntry

    return bool(OutboxEntry.objects.filter(event_id=event_id).exists())


@require_GET
def notifications(request: HttpRequest, user_id: int) -> JsonResponse:
    if not User.objects.filter(id=user_id).exists():
        return _not_found(f"user {user_id} not found")
    rows = Notification.objects.filter(user_id=user_id).order_by("id")
    return JsonResponse([{"event_id": n.event_id, "text": n.text} for n in rows], safe=False)
