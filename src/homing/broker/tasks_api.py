"""The Cloud Tasks gRPC API (``google.cloud.tasks.v2.CloudTasks``) over the broker's queues.

google-cloud-tasks talks gRPC to any endpoint it is given (``CLOUD_TASKS_EMULATOR_HOST`` for
homing's publisher; ``client_options={"api_endpoint": ...}`` with an insecure channel for a
client of one's own), and these handlers answer it with the client's own message classes, so it
works unchanged. Refused calls get Cloud Tasks' status codes (INVALID_ARGUMENT, NOT_FOUND,
ALREADY_EXISTS); methods the broker does not offer (pause, resume, purge, run, IAM, batch
calls) get UNIMPLEMENTED.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.cloud.tasks_v2 import types as t
from google.protobuf import empty_pb2

from homing.broker.api import _unary, _unimplemented
from homing.broker.tasks import CloudTasks

SERVICE = "google.cloud.tasks.v2.CloudTasks"


def _view(task: t.Task, view: int) -> t.Task:
    """``task`` as the response view asks: BASIC (the default) leaves out the body."""
    if view == t.Task.View.FULL:
        return task
    basic: t.Task = t.Task.deserialize(t.Task.serialize(task))
    basic.http_request.body = b""
    basic.view = t.Task.View.BASIC  # type: ignore[assignment]
    return basic


class CloudTasksService:
    """The service's handlers, bound to one broker's :class:`CloudTasks`."""

    def __init__(self, cloud_tasks: CloudTasks) -> None:
        self.tasks = cloud_tasks

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """A generic handler to add to a ``grpc.aio`` server."""
        methods = {
            "CreateQueue": _unary(self.create_queue, t.CreateQueueRequest, t.Queue),
            "GetQueue": _unary(self.get_queue, t.GetQueueRequest, t.Queue),
            "UpdateQueue": _unary(self.update_queue, t.UpdateQueueRequest, t.Queue),
            "ListQueues": _unary(self.list_queues, t.ListQueuesRequest, t.ListQueuesResponse),
            "DeleteQueue": _unary(self.delete_queue, t.DeleteQueueRequest, empty_pb2.Empty),
            "CreateTask": _unary(self.create_task, t.CreateTaskRequest, t.Task),
            "GetTask": _unary(self.get_task, t.GetTaskRequest, t.Task),
            "ListTasks": _unary(self.list_tasks, t.ListTasksRequest, t.ListTasksResponse),
            "DeleteTask": _unary(self.delete_task, t.DeleteTaskRequest, empty_pb2.Empty),
            "PauseQueue": _unary(_unimplemented, t.PauseQueueRequest, t.Queue),
            "ResumeQueue": _unary(_unimplemented, t.ResumeQueueRequest, t.Queue),
            "PurgeQueue": _unary(_unimplemented, t.PurgeQueueRequest, t.Queue),
            "RunTask": _unary(_unimplemented, t.RunTaskRequest, t.Task),
        }
        return [grpc.method_handlers_generic_handler(SERVICE, methods)]

    async def create_queue(self, request: t.CreateQueueRequest, _: Any) -> t.Queue:
        return await self.tasks.create_queue(request.parent, request.queue)

    async def get_queue(self, request: t.GetQueueRequest, _: Any) -> t.Queue:
        return self.tasks.get_queue(request.name)

    async def update_queue(self, request: t.UpdateQueueRequest, _: Any) -> t.Queue:
        return await self.tasks.update_queue(request.queue, list(request.update_mask.paths))

    async def list_queues(self, request: t.ListQueuesRequest, _: Any) -> t.ListQueuesResponse:
        return t.ListQueuesResponse(queues=self.tasks.list_queues(request.parent))

    async def delete_queue(self, request: t.DeleteQueueRequest, _: Any) -> empty_pb2.Empty:
        await self.tasks.delete_queue(request.name)
        return empty_pb2.Empty()

    async def create_task(self, request: t.CreateTaskRequest, _: Any) -> t.Task:
        task = await self.tasks.create_task(request.parent, request.task)
        return _view(task, request.response_view)

    async def get_task(self, request: t.GetTaskRequest, _: Any) -> t.Task:
        return _view(self.tasks.get_task(request.name), request.response_view)

    async def list_tasks(self, request: t.ListTasksRequest, _: Any) -> t.ListTasksResponse:
        found = self.tasks.list_tasks(request.parent)
        start = int(request.page_token) if request.page_token.isdecimal() else 0
        size = request.page_size or 1000
        page = found[start : start + size]
        token = str(start + size) if start + size < len(found) else ""
        return t.ListTasksResponse(
            tasks=[_view(task, request.response_view) for task in page], next_page_token=token
        )

    async def delete_task(self, request: t.DeleteTaskRequest, _: Any) -> empty_pb2.Empty:
        await self.tasks.delete_task(request.name)
        return empty_pb2.Empty()
