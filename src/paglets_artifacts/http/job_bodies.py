"""The bodies of ``POST /jobs/{kind}``: one JSON object (a job's arguments) or a JSON array
of them (a batch), read within their bounds before anything is parsed or enqueued."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from ..errors import InvalidInput
from ..jobs import contract
from .limits import MAX_JOB_BATCH_BODY_BYTES, MAX_JOB_BODY_BYTES, MAX_JSON_DEPTH


async def read_job_body(request: Request) -> dict[str, Any] | list[Any]:
    """A job's arguments (an object; ``{}`` for an empty body) or a batch's (a list, of at
    most ``contract.MAX_BATCH_JOBS`` items, whose items the contract judges later).

    A body is read up to the bound of one job's arguments, or of a batch once it shows
    itself an array (its first byte past whitespace a ``[``). ``InvalidInput`` names what is
    wrong."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > MAX_JOB_BATCH_BODY_BYTES:
        raise InvalidInput(f"job arguments are larger than {MAX_JOB_BATCH_BODY_BYTES} bytes")
    raw = bytearray()
    first = b""  # the body's first byte past whitespace, once it came
    async for chunk in request.stream():
        raw += chunk
        first = first or chunk.lstrip()[:1]
        bound = MAX_JOB_BATCH_BODY_BYTES if first == b"[" else MAX_JOB_BODY_BYTES
        if len(raw) > bound:
            raise InvalidInput(f"job arguments are larger than {bound} bytes")
    if not raw.strip():
        return {}
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise InvalidInput(f"job arguments are nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"job arguments are not JSON: {exc}") from None
    if isinstance(payload, list):
        if len(payload) > contract.MAX_BATCH_JOBS:
            raise InvalidInput(f"a batch holds at most {contract.MAX_BATCH_JOBS} jobs, got {len(payload)}: split it")
        return payload
    if not isinstance(payload, dict):
        raise InvalidInput(f"job arguments must be a JSON object or an array of them, got {type(payload).__name__}")
    return payload


def json_depth(raw: bytes | bytearray) -> int:
    """The deepest nesting of arrays and objects in a JSON text, brackets inside strings
    not counted (a linear scan: no parser, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest
