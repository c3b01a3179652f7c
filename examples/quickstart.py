from fastapi import FastAPI
from pydantic import BaseModel

from homing import Homing
from homing.asgi import PushEndpoint, PushFastPath

# From the environment (HOMING_*): on your machine it posts events back to this service;
# HOMING_PUBLISHER=pubsub publishes to Pub/Sub (or its emulator) with no code change.
homing = Homing.from_env()


@homing.event("user.name.changed")
class UserNameChanged(BaseModel):
    user_id: int
    new_name: str


@homing.handler(UserNameChanged)
async def send_email(event: UserNameChanged) -> None:
    print(f"emailing user {event.user_id}: your name is now {event.new_name}")


api = FastAPI(lifespan=homing.lifespan)


@api.post("/change-name")
async def change_name(user_id: int, name: str) -> dict[str, str]:
    # Published before the response: on Cloud Run the CPU is gone once we answer.
    event_id = await homing.publish(UserNameChanged(user_id=user_id, new_name=name))
    return {"event_id": event_id}


# POST /events (verify, decode, dedupe, run the handler) straight to homing; the rest to FastAPI.
app = PushFastPath(api, PushEndpoint(homing))
