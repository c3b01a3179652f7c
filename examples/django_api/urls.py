from __future__ import annotations

from django.urls import include, path

from django_api import views

urlpatterns = [
    path("healthz", views.healthz),
    path("users", views.create_user),
    path("users/<int:user_id>", views.get_user),
    path("users/<int:user_id>/notifications", views.notifications),
    path("change-name", views.change_name),
    path("", include("homing.django.urls")),  # POST /events
]
