"""homing in a Django project (``homing[django]``): the push view, stores on Django's database,
the outbox in Django's transaction, a ``django.tasks`` backend, and ``manage.py homing``.

::

    # settings.py
    INSTALLED_APPS += ["homing.django"]
    HOMING = {"APP": "myproject.events:homing", "AUTH": "both", ...}   # + HOMING_* variables
    TASKS = {"default": {"BACKEND": "homing.django.tasks.HomingTaskBackend"}}

    # myproject/events.py
    homing = build()                     # Homing.from_env, stores on Django's database

    @homing.handler(UserNameChanged, effects="database")
    async def notify(event: UserNameChanged) -> None:
        await Notification.objects.acreate(user_id=event.user_id)   # in atomic(), with the mark

    # urls.py
    urlpatterns = [path("", include("homing.django.urls"))]          # POST /events

    # a view
    with transaction.atomic():
        user.save()
        publish(UserNameChanged(user_id=user.id))                    # published on commit

Nothing here touches Django's models until it is used, so importing it needs no app registry.
"""

from homing.django.config import build, service
from homing.django.outbox import apublish, flush, publish
from homing.django.stores import (
    DjangoDedupeStore,
    DjangoQuarantineStore,
    DjangoTransaction,
    run_in,
)
from homing.django.views import push_view

__all__ = [
    "DjangoDedupeStore",
    "DjangoQuarantineStore",
    "DjangoTransaction",
    "apublish",
    "build",
    "flush",
    "publish",
    "push_view",
    "run_in",
    "service",
]
