"""``path("", include("homing.django.urls"))``: the configured service's push endpoint at
``events`` (``POST /events``)."""

from __future__ import annotations

from django.urls import path

from homing.django.views import push_view

app_name = "homing"

urlpatterns = [path("events", push_view(), name="push")]
