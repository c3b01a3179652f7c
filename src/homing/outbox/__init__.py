"""The transactional outbox: an event is written in the same database transaction as the state
change that caused it, so it can never be lost between the database and the broker.

::

    async with sessions.begin() as session:
        user.name = new_name
        staged = await outbox.stage(session, homing.sign(UserNameChanged(...)))
    await outbox.send(staged)   # published now when the broker answers; else it waits

A staged event that could not be sent stays in ``homing_outbox`` until :meth:`SQLOutbox.flush`
publishes it: from the authenticated HTTP route (Cloud Scheduler), the ``homing outbox flush``
command, or the next ``send``. Its event id never changes, so a republished event is recognised
downstream as the same event.

One module per concern: ``staging`` (:class:`SQLOutbox`: stage, send), ``draining`` (flush,
the background drains and sweeps), ``table`` (the statements on ``homing_outbox``) and
``endpoint`` (:class:`FlushEndpoint`).
"""

from homing.outbox.draining import FlushReport
from homing.outbox.endpoint import FlushEndpoint
from homing.outbox.staging import SQLOutbox

__all__ = ["FlushEndpoint", "FlushReport", "SQLOutbox"]
