"""The article's service on homing: users, a name change that publishes an event, notifications."""

from users_api.app import ServiceConfig, create_app

__all__ = ["ServiceConfig", "create_app"]
