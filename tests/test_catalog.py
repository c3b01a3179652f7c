"""The event catalogue: Markdown, AsyncAPI 3.0 (valid against the published schema), check."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from pydantic import BaseModel

from homing import Homing, KeyRing, Signer
from homing.catalog import Catalog, incompatible_changes, render_asyncapi, render_markdown
from homing.cli import main
from tests.schemas import asyncapi
from tests.support.required import missing


class Address(BaseModel):
    city: str
    zip: str | None = None


class OrderPlaced(BaseModel):
    """An order was placed."""

    order_id: int
    total_cents: int
    placed_at: datetime
    ship_to: Address
    tags: list[str] = []


class Refunded(BaseModel):
    order_id: int


def _homing(*models: tuple[str, type[BaseModel]], handled: tuple[str, ...] = ()) -> Homing:
    homing = Homing(signer=Signer(KeyRing.generate()))
    for name, model in models:
        homing.events.register(name, model)
        if name in handled:

            async def handle(event: BaseModel) -> None:
                return None

            homing.handler(model)(handle)
    return homing


def _document(*models: tuple[str, type[BaseModel]]) -> dict[str, Any]:
    return render_asyncapi(Catalog.of(_homing(*models)))


SHOP = (("order.placed", OrderPlaced), ("order.refunded", Refunded))


@pytest.fixture(scope="module")
def asyncapi_schema() -> dict[str, Any]:
    try:
        path = asyncapi.fetch()
    except RuntimeError as exc:
        missing(f"the AsyncAPI 3.0 schema is not available: {exc}")
    schema: dict[str, Any] = orjson.loads(path.read_bytes())
    return schema


def _errors(schema: dict[str, Any], document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_the_validator_refuses_what_is_not_asyncapi(asyncapi_schema: dict[str, Any]) -> None:
    broken = _document(*SHOP)
    broken["channels"]["events"]["messages"] = "not a map"
    del broken["info"]["version"]
    assert len(_errors(asyncapi_schema, broken)) >= 2
    assert _errors(asyncapi_schema, {"asyncapi": "3.0.0"}) != []


@pytest.mark.parametrize("push_endpoint", [None, "https://shop-xyz.a.run.app/events"])
def test_the_asyncapi_document_is_valid_asyncapi_3(
    asyncapi_schema: dict[str, Any], push_endpoint: str | None
) -> None:
    catalog = Catalog.of(
        _homing(*SHOP, handled=("order.placed",)),
        title="shop",
        version="1.2.0",
        topic="projects/p/topics/shop",
        project="p",
        push_endpoint=push_endpoint,
    )
    document = render_asyncapi(catalog)
    assert _errors(asyncapi_schema, document) == []
    assert document["asyncapi"] == "3.0.0"
    assert document["channels"]["events"]["address"] == "projects/p/topics/shop"
    assert sorted(document["components"]["messages"]) == ["order.placed", "order.refunded"]
    assert [m["$ref"] for m in document["operations"]["receive"]["messages"]] == [
        "#/channels/events/messages/order.placed"
    ]
    schemes = document["components"]["securitySchemes"]
    assert (schemes["hmac"]["type"], schemes["oidc"]["type"]) == (
        "symmetricEncryption",
        "openIdConnect",
    )
    assert ("push" in document["servers"]) is (push_endpoint is not None)
    assert document["operations"]["receive"]["security"] == [
        {"$ref": "#/components/securitySchemes/hmac"}  # the service's auth mode: hmac
    ]


def test_the_nested_model_is_a_shared_schema() -> None:
    document = _document(*SHOP)
    schemas = document["components"]["schemas"]
    assert schemas["order.placed"]["properties"]["ship_to"] == {
        "$ref": "#/components/schemas/Address"
    }
    assert schemas["Address"]["required"] == ["city"]


def test_markdown_lists_each_event_with_its_fields_and_schema() -> None:
    text = render_markdown(Catalog.of(_homing(*SHOP, handled=("order.placed",)), title="shop"))
    assert "| `order.placed` | `OrderPlaced` | yes |" in text
    assert "| `order.refunded` | `Refunded` | no |" in text
    assert "An order was placed." in text
    assert "| `placed_at` | string (date-time) | yes |" in text
    assert "| `ship_to` | `Address` | yes |" in text
    assert "| `tags` | array of string | no |" in text
    assert '"title": "OrderPlaced"' in text


def test_a_model_without_a_docstring_has_no_description() -> None:
    class Documented(BaseModel):
        """A documented event."""

    class Inheriting(Documented):  # its parent's docstring is not its own
        pass

    catalog = Catalog.of(
        _homing(("order.refunded", Refunded), ("a.documented", Documented), ("a.b", Inheriting))
    )
    described = {entry.type_name: entry.description for entry in catalog.events}
    assert described == {"order.refunded": "", "a.documented": "A documented event.", "a.b": ""}
    text = render_markdown(catalog)
    document = render_asyncapi(catalog)
    pydantic_doc = "A base class for creating Pydantic models"  # BaseModel's own docstring
    assert pydantic_doc not in text
    assert pydantic_doc not in orjson.dumps(document).decode()
    assert "summary" not in document["components"]["messages"]["order.refunded"]


# -- check ------------------------------------------------------------------------------------


class OrderPlacedV2(BaseModel):  # total_cents gone, order_id a string, ship_to.zip required
    order_id: str
    placed_at: datetime
    ship_to: AddressV2
    tags: list[str] = []
    note: str | None = None  # a new optional field: compatible


class AddressV2(BaseModel):
    city: str
    zip: str
    country: str


OrderPlacedV2.model_rebuild()


def test_an_unchanged_catalogue_has_no_incompatible_change() -> None:
    assert incompatible_changes(_document(*SHOP), _document(*SHOP)) == []


def test_new_types_and_optional_fields_are_compatible() -> None:
    class WithNote(OrderPlaced):
        note: str = ""

    saved = _document(("order.placed", OrderPlaced))
    current = _document(("order.placed", WithNote), ("order.refunded", Refunded))
    assert incompatible_changes(saved, current) == []


def test_each_incompatible_change_is_named() -> None:
    saved = _document(*SHOP)
    current = _document(("order.placed", OrderPlacedV2))
    assert incompatible_changes(saved, current) == [
        "order.placed: field 'order_id' changed type from integer to string",
        "order.placed: field 'total_cents' removed",
        "order.placed: field 'ship_to.zip' changed type from null or string to string",
        "order.placed: field 'ship_to.country' added as required",
        "order.placed: field 'ship_to.zip' became required",
        "order.refunded: event type removed",
    ]


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def service_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/catalog.db")
    monkeypatch.setenv("HOMING_SIGNING_KEYS", "cat-key:a-catalogue-secret-long-enough")
    monkeypatch.setenv("HOMING_TOPIC", "projects/p/topics/users")


APP = ["--app", "users_api.app:create_app"]


def test_the_reference_service_lists_user_name_changed_in_both_formats(
    service_env: None, capsys: pytest.CaptureFixture[str], asyncapi_schema: dict[str, Any]
) -> None:
    assert main(["catalog", *APP]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# homing reference service 0.1.0: events\n")
    assert "| `user.name.changed` | `UserNameChanged` | yes |" in text
    assert "| `old_name` | string | yes |" in text

    assert main(["catalog", *APP, "--format", "asyncapi"]) == 0
    document = orjson.loads(capsys.readouterr().out)
    assert _errors(asyncapi_schema, document) == []
    schema = document["components"]["schemas"]["user.name.changed"]
    assert schema["required"] == ["user_id", "old_name", "new_name"]
    assert schema["properties"]["user_id"]["type"] == "integer"
    assert document["channels"]["events"]["address"] == "projects/p/topics/users"


def test_check_against_a_saved_catalogue(
    service_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "events.asyncapi.json"
    assert main(["catalog", *APP, "--format", "asyncapi", "--output", str(saved)]) == 0
    assert main(["catalog", *APP, "--check", str(saved)]) == 0
    assert capsys.readouterr().out == f"compatible with {saved} (2 event types)\n"

    document = orjson.loads(saved.read_bytes())
    schema = document["components"]["schemas"]["user.name.changed"]
    schema["properties"]["email"] = {"type": "string"}  # a field the service no longer has
    schema["properties"]["user_id"] = {"type": "string"}
    saved.write_bytes(orjson.dumps(document))
    assert main(["catalog", *APP, "--check", str(saved)]) == 1
    assert capsys.readouterr().out == (
        "incompatible: user.name.changed: field 'user_id' changed type from string to integer\n"
        "incompatible: user.name.changed: field 'email' removed\n"
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"{not json", "cannot read the saved catalogue"), (b"[]", "is not an AsyncAPI document")],
)
def test_check_refuses_a_file_that_is_not_a_catalogue(
    service_env: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    says: str,
) -> None:
    saved = tmp_path / "saved.json"
    saved.write_bytes(content)
    assert main(["catalog", *APP, "--check", str(saved)]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("auth", "schemes"), [("hmac", ["hmac"]), ("oidc", ["oidc"]), ("both", ["hmac", "oidc"])]
)
async def test_the_receive_operation_names_the_services_auth_mode(
    asyncapi_schema: dict[str, Any], auth: str, schemes: list[str]
) -> None:
    from homing.auth import OIDCVerifier

    oidc = OIDCVerifier(audience="https://svc/events", service_accounts=("push@p.iam",))
    homing = Homing(signer=Signer(KeyRing.generate()), oidc=oidc, auth=auth)  # type: ignore[arg-type]
    homing.events.register("order.refunded", Refunded)

    @homing.handler(Refunded)
    async def handle(event: Refunded) -> None:
        return None

    document = render_asyncapi(Catalog.of(homing))
    await homing.aclose()
    receive = document["operations"]["receive"]
    assert [ref["$ref"].rpartition("/")[2] for ref in receive["security"]] == schemes
    assert receive["description"].startswith(f"Push authentication: {auth}")
    assert _errors(asyncapi_schema, document) == []
