"""The event catalogue: every event type a service registers, with its JSON Schema.

Rendered as Markdown (for people) or as an AsyncAPI 3.0 document (for tools); and checked
against a saved AsyncAPI catalogue, so that a publisher and a consumer deployed apart don't
break each other: a field removed, a field's type changed, or a field newly required is named.

Example::

    catalog = Catalog.of(homing, title="users", version="1.4.0")
    print(render_markdown(catalog))
    document = render_asyncapi(catalog)
    for change in incompatible_changes(saved_document, document):
        print(change)
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel

from homing.app import Homing
from homing.signing import EVENT_ID, EVENT_TYPE, KEY_ID, SIGNATURE, TIMESTAMP

__all__ = [
    "Catalog",
    "EventEntry",
    "incompatible_changes",
    "render_asyncapi",
    "render_markdown",
]

ASYNCAPI_VERSION = "3.0.0"
_REF_PREFIX = "#/components/schemas/"
_GOOGLE_OIDC = "https://accounts.google.com/.well-known/openid-configuration"


@dataclass(frozen=True)
class EventEntry:
    """One event type: its name, model, JSON Schema and whether this service handles it."""

    type_name: str
    model: type[BaseModel]
    handled: bool

    @property
    def description(self) -> str:
        """The model's own docstring; never one it inherits (pydantic's ``BaseModel``'s)."""
        doc = self.model.__dict__.get("__doc__")
        return inspect.cleandoc(doc) if isinstance(doc, str) else ""

    @property
    def message_name(self) -> str:
        """A component key for the type (AsyncAPI keys allow letters, digits, ``.-_``)."""
        return re.sub(r"[^A-Za-z0-9_.\-]", "_", self.type_name)


@dataclass(frozen=True)
class Catalog:
    """A service's events, ready to render.

    ``topic``, ``project`` and ``push_endpoint`` describe where they travel, when known.
    """

    title: str
    version: str
    events: tuple[EventEntry, ...]
    topic: str | None = None
    project: str | None = None
    push_endpoint: str | None = None
    schemas: Mapping[str, Any] = field(default_factory=dict, repr=False)
    auth: str = "hmac"

    @classmethod
    def of(
        cls,
        homing: Homing,
        *,
        title: str = "homing service",
        version: str = "0.0.0",
        topic: str | None = None,
        project: str | None = None,
        push_endpoint: str | None = None,
    ) -> Catalog:
        """The catalogue of every event registered with ``homing``, sorted by type name."""
        entries = tuple(
            EventEntry(name, model, bool(homing.handlers.get(name)))
            for name in sorted(homing.events)
            if (model := homing.events.model(name)) is not None
        )
        schemas: dict[str, Any] = {}
        for entry in entries:
            schema = entry.model.model_json_schema(ref_template=_REF_PREFIX + "{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[entry.message_name] = schema
        return cls(
            title, version, entries, topic, project, push_endpoint, schemas, auth=homing.auth
        )


def render_markdown(catalog: Catalog) -> str:
    """The catalogue as Markdown: one section per event type, with its JSON Schema."""
    lines = [f"# {catalog.title} {catalog.version}: events", ""]
    if catalog.topic:
        lines += [f"Published to the Pub/Sub topic `{catalog.topic}`.", ""]
    lines += ["| event type | model | handled here |", "|---|---|---|"]
    for entry in catalog.events:
        handled = "yes" if entry.handled else "no"
        lines.append(f"| `{entry.type_name}` | `{entry.model.__qualname__}` | {handled} |")
    lines.append("")
    for entry in catalog.events:
        lines += [f"## `{entry.type_name}`", ""]
        if entry.description:
            lines += [entry.description, ""]
        lines += [
            "| field | type | required |",
            "|---|---|---|",
        ]
        schema = catalog.schemas[entry.message_name]
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            needed = "yes" if name in required else "no"
            lines.append(f"| `{name}` | {_type_label(prop)} | {needed} |")
        lines += ["", "```json", _json(schema), "```", ""]
    definitions = {
        name: schema
        for name, schema in catalog.schemas.items()
        if name not in {entry.message_name for entry in catalog.events}
    }
    if definitions:
        lines += ["## Shared definitions", "", "```json", _json(definitions), "```", ""]
    lines += [
        "Every message is signed (HMAC-SHA256 over its data and attributes, see "
        "docs/signing.md) and pushed with Google's OIDC token.",
        "",
    ]
    return "\n".join(lines)


def render_asyncapi(catalog: Catalog) -> dict[str, Any]:
    """The catalogue as an AsyncAPI 3.0 document (a dict, ready for JSON)."""
    messages: dict[str, Any] = {}
    for entry in catalog.events:
        message: dict[str, Any] = {
            "name": entry.type_name,
            "title": entry.model.__qualname__,
            "contentType": "application/json",
            "headers": _attributes(entry.type_name),
            "payload": {"$ref": _REF_PREFIX + entry.message_name},
        }
        if entry.description:
            message["summary"] = entry.description.splitlines()[0]
            message["description"] = entry.description
        messages[entry.message_name] = message
    refs = {key: {"$ref": f"#/components/messages/{key}"} for key in messages}
    channel: dict[str, Any] = {
        "address": catalog.topic,
        "title": "homing events",
        "description": "One Pub/Sub topic carries every event type; the `event-type` "
        "attribute routes each to its model and handler.",
        "messages": refs,
    }
    operations: dict[str, Any] = {}
    if refs:
        operations["publish"] = {
            "action": "send",
            "channel": {"$ref": "#/channels/events"},
            "summary": "Events this service publishes, signed, before it answers.",
            "security": [{"$ref": "#/components/securitySchemes/hmac"}],
            "messages": [{"$ref": f"#/channels/events/messages/{key}"} for key in refs],
        }
    handled = [entry.message_name for entry in catalog.events if entry.handled]
    if handled:
        schemes = {"hmac": ["hmac"], "oidc": ["oidc"], "both": ["hmac", "oidc"]}
        required = schemes.get(catalog.auth, [])
        operations["receive"] = {
            "action": "receive",
            "channel": {"$ref": "#/channels/events"},
            "summary": "Events Pub/Sub pushes to this service's push endpoint.",
            "description": f"Push authentication: {catalog.auth}"
            + (" (both schemes are checked, each must pass)." if len(required) > 1 else "."),
            "security": [{"$ref": f"#/components/securitySchemes/{s}"} for s in required],
            "messages": [{"$ref": f"#/channels/events/messages/{key}"} for key in handled],
        }
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": catalog.title,
            "version": catalog.version,
            "description": "Events published through Google Cloud Pub/Sub and delivered by "
            "push, made with homing.",
        },
        "defaultContentType": "application/json",
        "servers": _servers(catalog),
        "channels": {"events": channel},
        "operations": operations,
        "components": {
            "schemas": dict(catalog.schemas),
            "messages": messages,
            "securitySchemes": {
                "hmac": {
                    "type": "symmetricEncryption",
                    "description": "HMAC-SHA256 over the data, the event type, every other "
                    f"attribute, the event id and a timestamp, in the `{SIGNATURE}` attribute "
                    f"(key id in `{KEY_ID}`); keys rotate by id. See docs/signing.md.",
                },
                "oidc": {
                    "type": "openIdConnect",
                    "description": "Pub/Sub push attaches a Google-signed OIDC token "
                    "(`Authorization: Bearer`), checked for issuer, audience and the push "
                    "service account.",
                    "openIdConnectUrl": _GOOGLE_OIDC,
                    "scopes": [],
                },
            },
        },
    }
    return document


def _servers(catalog: Catalog) -> dict[str, Any]:
    pubsub: dict[str, Any] = {
        "host": "pubsub.googleapis.com",
        "protocol": "googlepubsub",
        "description": "Google Cloud Pub/Sub"
        + (f", project {catalog.project}" if catalog.project else ""),
    }
    servers: dict[str, Any] = {"pubsub": pubsub}
    if catalog.push_endpoint:
        match = re.match(r"^(https?)://([^/]+)(/.*)?$", catalog.push_endpoint)
        if match:
            push: dict[str, Any] = {
                "host": match.group(2),
                "protocol": match.group(1),
                "description": "This service's push endpoint, which Pub/Sub POSTs events to.",
                "security": [{"$ref": "#/components/securitySchemes/oidc"}],
            }
            if match.group(3):
                push["pathname"] = match.group(3)
            servers["push"] = push
    return servers


def _attributes(type_name: str) -> dict[str, Any]:
    text = {"type": "string"}
    return {
        "type": "object",
        "description": "Pub/Sub message attributes, all covered by the signature.",
        "required": [EVENT_TYPE, EVENT_ID, TIMESTAMP, KEY_ID, SIGNATURE],
        "properties": {
            EVENT_TYPE: {"type": "string", "const": type_name},
            EVENT_ID: {**text, "description": "made by the publisher; replays stop on it"},
            TIMESTAMP: {**text, "description": "seconds since the epoch, when signed"},
            KEY_ID: {**text, "description": "the id of the signing key"},
            SIGNATURE: {**text, "description": "v1:<hex HMAC-SHA256>"},
        },
    }


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _type_label(schema: Mapping[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{str(schema['$ref']).rpartition('/')[2]}`"
    if "anyOf" in schema:
        return " or ".join(_type_label(option) for option in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type_label(schema.get('items', {}))}"
    return f"{kind}" + (f" ({schema['format']})" if "format" in schema else "")


# -- compatibility ----------------------------------------------------------------------------


def incompatible_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Each change from ``saved`` to ``current`` (AsyncAPI documents) that breaks a party.

    Named: an event type removed; a field removed (a consumer still reading it breaks); a
    field's type changed (either side breaks); a field required that was optional or new (a
    publisher still sending the old shape breaks). New event types and new optional fields
    are compatible.
    """
    changes: list[str] = []
    old_messages = _messages(saved)
    new_messages = _messages(current)
    for type_name, old_ref in sorted(old_messages.items()):
        new_ref = new_messages.get(type_name)
        if new_ref is None:
            changes.append(f"{type_name}: event type removed")
            continue
        changes.extend(
            f"{type_name}: {change}"
            for change in _schema_changes(saved, old_ref, current, new_ref, path="")
        )
    return changes


def _messages(document: Mapping[str, Any]) -> dict[str, Any]:
    """Event type name -> payload schema, from an AsyncAPI document's messages."""
    found: dict[str, Any] = {}
    components = document.get("components", {})
    for key, message in components.get("messages", {}).items():
        message = _deref(document, message)
        found[str(message.get("name", key))] = message.get("payload", {})
    return found


def _deref(document: Mapping[str, Any], schema: Any, depth: int = 0) -> Any:
    while isinstance(schema, Mapping) and "$ref" in schema and depth < 32:
        ref = str(schema["$ref"])
        if not ref.startswith("#/"):
            return schema
        node: Any = document
        for part in ref[2:].split("/"):
            node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
        schema, depth = node, depth + 1
    return schema


def _schema_changes(
    old_doc: Mapping[str, Any],
    old: Any,
    new_doc: Mapping[str, Any],
    new: Any,
    *,
    path: str,
    depth: int = 0,
) -> Iterator[str]:
    old, new = _deref(old_doc, old), _deref(new_doc, new)
    if depth > 16 or not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return
    old_type, new_type = _shape(old_doc, old), _shape(new_doc, new)
    if old_type != new_type:
        where = f"field {path!r}" if path else "the payload"
        yield f"{where} changed type from {old_type} to {new_type}"
        return
    old_props = old.get("properties", {})
    new_props = new.get("properties", {})
    old_required = set(old.get("required", ()))
    new_required = set(new.get("required", ()))
    for name in old_props:
        field_path = f"{path}.{name}" if path else name
        if name not in new_props:
            yield f"field {field_path!r} removed"
            continue
        yield from _schema_changes(
            old_doc, old_props[name], new_doc, new_props[name], path=field_path, depth=depth + 1
        )
    for name in sorted(new_required - old_required):
        field_path = f"{path}.{name}" if path else name
        if name in old_props:
            yield f"field {field_path!r} became required"
        else:
            yield f"field {field_path!r} added as required"
    old_items, new_items = old.get("items"), new.get("items")
    if old_items is not None and new_items is not None:
        yield from _schema_changes(
            old_doc, old_items, new_doc, new_items, path=f"{path}[]", depth=depth + 1
        )


def _shape(document: Mapping[str, Any], schema: Mapping[str, Any]) -> str:
    """A comparable name for what a schema accepts at its top: ``integer``, ``string or null``."""
    schema = _deref(document, schema)
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf") or []
        return " or ".join(sorted({_shape(document, option) for option in options}))
    if "enum" in schema:
        return "one of " + ", ".join(sorted(orjson.dumps(v).decode() for v in schema["enum"]))
    if "const" in schema:
        return "exactly " + orjson.dumps(schema["const"]).decode()
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(sorted(str(k) for k in kind))
    if kind is None and "properties" in schema:
        return "object"
    label = str(kind or "any")
    return label + (f" ({schema['format']})" if "format" in schema else "")
