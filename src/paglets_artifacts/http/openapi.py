"""The OpenAPI document of the HTTP API, derived from the job contract, the ref and the
job record rather than written beside them."""

from __future__ import annotations

import dataclasses
import functools
import logging
import types
import typing
from typing import Any

from ..jobs import contract
from ..jobs.callbacks import MAX_CALLBACK_URL_LENGTH
from ..jobs.dead_letters import DeadLetter
from ..jobs.records import CALLBACK_STATES, STATES, JobRecord
from ..refs import ArtifactRef
from .limits import MAX_DEAD_LETTER_LIST, MAX_JOB_LIST
from .remote import SHA256_HEADER

logger = logging.getLogger("paglets_artifacts.http")

#: JSON schema types of the Python types that refs and job records hold.
_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
}


def _json_schema_of(hint: Any) -> dict[str, Any]:
    """The JSON schema of a field's type: ``Any`` is any value, ``X | None`` also null."""
    if hint is Any:
        return {}
    members = typing.get_args(hint)
    if type(None) in members and typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [member for member in members if member is not type(None)]
        schema = _json_schema_of(inner)
        return {**schema, "type": [schema["type"], "null"]}
    return {"type": _JSON_TYPES[typing.get_origin(hint) or hint]}


def _fields_schema(cls: type, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The properties of a dataclass's wire form (its fields), from their type hints."""
    hints = typing.get_type_hints(cls)
    return {item.name: overrides.get(item.name, _json_schema_of(hints[item.name])) for item in dataclasses.fields(cls)}


def _error_responses(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


def _json(schema_ref: str, description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every endpoint this application serves."""
    artifact_id = {"name": "artifact_id", "in": "path", "required": True, "schema": dict(contract.ARTIFACT_ID.schema)}
    job_kinds = {kind.name: kind.arguments_schema() for kind in contract.KINDS.values()}
    ref_properties = _fields_schema(ArtifactRef)
    record_properties = _fields_schema(
        JobRecord,
        state={"type": "string", "enum": list(STATES)},
        callback_state={"type": "string", "enum": ["", *CALLBACK_STATES]},
    )
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    letter_id = {"name": "letter_id", "in": "path", "required": True, "schema": {"type": "string"}}
    idempotency_key = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": "a client's name for this request: the same key with the same kind and arguments, within "
        "the job retention time, answers the job it enqueued first (replayed, header Idempotent-Replayed: true); "
        "other arguments under the key are refused (422 IdempotencyConflict)",
    }
    callback_url = {
        "name": "Callback-URL",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "format": "uri", "maxLength": MAX_CALLBACK_URL_LENGTH},
        "description": "an http(s) URL under PAGLETS_ARTIFACTS_ALLOWED_HOSTS that receives the job's final record "
        "(JobRecord, JSON) in a POST once it ends, signed: X-Paglets-Artifacts-Signature: sha256=<hex> is the "
        "HMAC-SHA256 keyed with PAGLETS_ARTIFACTS_CALLBACK_SECRET of '<X-Paglets-Artifacts-Timestamp>.' followed by "
        "the body; retried with backoff on a 5xx, 408, 429, connection error or timeout; redirects are not followed; "
        "the record's callback_state tells how it went. A host off the list, or no secret configured: 400 InvalidInput",
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "paglets-artifacts host API", "version": "1"},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "when PAGLETS_ARTIFACTS_API_KEY is set"}
            },
            "schemas": {
                "ArtifactRef": {"type": "object", "properties": ref_properties, "required": list(ref_properties)},
                "Artifact": {
                    "type": "object",
                    "properties": {"artifact": {"$ref": "#/components/schemas/ArtifactRef"}},
                },
                "Artifacts": {
                    "type": "object",
                    "properties": {
                        "artifacts": {"type": "array", "items": {"$ref": "#/components/schemas/ArtifactRef"}}
                    },
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "error_type": {
                            "type": "string",
                            "description": "a class paglets' client knows: TransferError, AuthenticationError, "
                            "ForbiddenError, HostError, RemoteHostError",
                        },
                        "error": {"type": "string"},
                        "error_class": {
                            "type": "string",
                            "description": "the precise class: ChecksumMismatch, ArtifactNotFound, QuotaExceeded, ...",
                        },
                        "state": {"type": "string", "description": "JobConflict (409): the job's state"},
                        "job_id": {"type": "string", "description": "IdempotencyConflict (422): the key's job"},
                    },
                    "required": ["error_type", "error"],
                },
                "JobAccepted": {
                    "type": "object",
                    "properties": {
                        "job_id": {"type": "string"},
                        "kind": {"type": "string"},
                        "status_url": {"type": "string"},
                        "replayed": {"type": "boolean", "description": "the Idempotency-Key already held this job"},
                    },
                },
                "JobsAccepted": {
                    "type": "object",
                    "description": "a batch's jobs, in the order of its items",
                    "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobAccepted"}}},
                },
                "JobRecord": {"type": "object", "properties": record_properties},
                "Job": {"type": "object", "properties": {"job": {"$ref": "#/components/schemas/JobRecord"}}},
                "Jobs": {
                    "type": "object",
                    "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobRecord"}}},
                },
                "DeadLetter": {"type": "object", "properties": _fields_schema(DeadLetter)},
                "DeadLetters": {
                    "type": "object",
                    "properties": {
                        "dead_letters": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}}
                    },
                },
                **{f"{name}_arguments": schema for name, schema in job_kinds.items()},
            },
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/artifacts": {
                "post": {
                    "summary": "Upload an artifact (raw body, Content-Length or chunked)",
                    "parameters": [
                        _query("owner_agent_id", {"type": "string"}, "owner of the artifact"),
                        _query("name", {"type": "string"}, "logical name"),
                        _query("compression", {"type": "string"}, "compression label"),
                        _query("expires_at", {"type": "number"}, "Unix time; 0 = never"),
                        _query("sha256", {"type": "string"}, "expected SHA-256; checked before commit"),
                        _query("size", {"type": "integer"}, "expected size in bytes"),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "responses": {"200": _json("Artifact"), **_error_responses(400, 401, 408, 413, 422, 503)},
                },
                "get": {
                    "summary": "List artifacts",
                    "parameters": [_query("owner_agent_id", {"type": "string"}, "only this owner's")],
                    "responses": {"200": _json("Artifacts"), **_error_responses(401)},
                },
            },
            "/artifacts/{artifact_id}": {
                "get": {
                    "summary": "Download an artifact's bytes",
                    "parameters": [artifact_id],
                    "responses": {
                        "200": {
                            "description": "the bytes",
                            "headers": {
                                SHA256_HEADER: {"schema": {"type": "string"}},
                                "Content-Length": {"schema": {"type": "integer"}},
                            },
                            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **_error_responses(400, 401, 404),
                    },
                },
                "delete": {
                    "summary": "Delete an artifact",
                    "parameters": [artifact_id],
                    "responses": {
                        "200": {
                            "description": "deleted",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}
                                }
                            },
                        },
                        **_error_responses(400, 401, 404),
                    },
                },
            },
            "/artifacts/{artifact_id}/metadata": {
                "get": {
                    "summary": "An artifact's ref",
                    "parameters": [artifact_id],
                    "responses": {"200": _json("Artifact"), **_error_responses(400, 401, 404)},
                },
            },
            **{
                f"/jobs/{name}": {
                    "post": {
                        "summary": f"Enqueue a {name} job: {contract.KINDS[name].doc}",
                        "description": "One object of arguments enqueues one job; an array of them "
                        f"(at most {contract.MAX_BATCH_JOBS}) enqueues one job per item in one Redis "
                        "transaction, every item checked first: one bad item enqueues nothing, and "
                        "the 400 names its index.",
                        "requestBody": {
                            "required": False,
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": f"#/components/schemas/{name}_arguments"},
                                            {
                                                "type": "array",
                                                "maxItems": contract.MAX_BATCH_JOBS,
                                                "items": {"$ref": f"#/components/schemas/{name}_arguments"},
                                            },
                                        ]
                                    }
                                }
                            },
                        },
                        "parameters": [idempotency_key, callback_url],
                        "responses": {
                            "202": {
                                "description": "enqueued (a batch: its jobs)",
                                "content": {
                                    "application/json": {
                                        "schema": {
                                            "oneOf": [
                                                {"$ref": "#/components/schemas/JobAccepted"},
                                                {"$ref": "#/components/schemas/JobsAccepted"},
                                            ]
                                        }
                                    }
                                },
                            },
                            **_error_responses(400, 401, 422, 503),
                        },
                    }
                }
                for name in job_kinds
            },
            "/ui": {
                "get": {
                    "summary": "The operator's dashboard (HTML); without a credential, the login form (401)",
                    "responses": {
                        "200": {"description": "the page", "content": {"text/html": {}}},
                        "401": {"description": "the login form", "content": {"text/html": {}}},
                    },
                }
            },
            "/ui/login": {
                "post": {
                    "summary": "Sign in to the dashboard with the API key: sets an HttpOnly session cookie",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": {"type": "object", "properties": {"key": {"type": "string"}}}
                            }
                        },
                    },
                    "responses": {
                        "303": {"description": "signed in: to /ui"},
                        "401": {"description": "wrong key: the form again", "content": {"text/html": {}}},
                        "403": {"description": "not from this host's page (Origin)"},
                    },
                }
            },
            "/jobs/{job_id}/cancel": {
                "post": {
                    "summary": "Cancel a job: a queued one never starts, a running one stops and leaves nothing",
                    "parameters": [job_id],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"by": {"type": "string", "description": "who cancels"}},
                                }
                            }
                        },
                    },
                    "responses": {"200": _json("Job", "canceled"), **_error_responses(400, 401, 404, 409, 503)},
                }
            },
            "/jobs/{job_id}/events": {
                "get": {
                    "summary": "Follow a job as Server-Sent Events: the record now, then one event per change, "
                    "ending at its final state; Last-Event-ID resumes after that event",
                    "parameters": [job_id],
                    "responses": {
                        "200": {
                            "description": "events 'record' whose data is the record's wire JSON",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_error_responses(401, 404, 503),
                    },
                }
            },
            "/jobs/{job_id}/retry": {
                "post": {
                    "summary": "Run a failed or canceled job again under its id",
                    "parameters": [job_id],
                    "responses": {"202": _json("Job", "queued again"), **_error_responses(401, 404, 409, 503)},
                }
            },
            "/dead-letters": {
                "get": {
                    "summary": "Messages Dramatiq gave up on, newest first",
                    "parameters": [
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": MAX_DEAD_LETTER_LIST, "default": 100},
                            "how many",
                        )
                    ],
                    "responses": {"200": _json("DeadLetters"), **_error_responses(400, 401, 503)},
                }
            },
            "/dead-letters/{letter_id}/requeue": {
                "post": {
                    "summary": "Queue a dead letter again (its job as a retry)",
                    "parameters": [letter_id],
                    "responses": {
                        "202": _json("JobAccepted", "queued again"),
                        **_error_responses(400, 401, 404, 409, 503),
                    },
                }
            },
            "/dead-letters/{letter_id}": {
                "delete": {
                    "summary": "Drop a dead letter for good",
                    "parameters": [letter_id],
                    "responses": {
                        "200": {
                            "description": "dropped",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}
                                }
                            },
                        },
                        **_error_responses(401, 404, 503),
                    },
                }
            },
            "/jobs/{job_id}": {
                "get": {
                    "summary": "A job's record",
                    "parameters": [job_id],
                    "responses": {"200": _json("Job"), **_error_responses(401, 404, 503)},
                }
            },
            "/jobs": {
                "get": {
                    "summary": "Recent jobs, newest first",
                    "parameters": [
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": MAX_JOB_LIST, "default": 50},
                            "how many",
                        ),
                        _query("kind", {"type": "string"}, "only this kind"),
                        _query("state", {"type": "string"}, "only this state"),
                    ],
                    "responses": {"200": _json("Jobs"), **_error_responses(400, 401, 503)},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This description", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
        },
    }
