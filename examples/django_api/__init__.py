"""The reference service in Django: the same HTTP API as ``users_api``, on ``homing.django``.

``DJANGO_SETTINGS_MODULE=django_api.settings``; ``make run-django`` serves it with the local
broker delivering its events.
"""
