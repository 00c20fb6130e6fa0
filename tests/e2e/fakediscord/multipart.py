"""Reading a message body: JSON, or multipart with ``payload_json`` and ``files[n]``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from .errors import DiscordHTTPError
from .util import request_key

_FILE_FIELD = re.compile(r"^files\[(\d+)\]$")


@dataclass(frozen=True)
class FilePart:
    """One uploaded file of a multipart request, by its ``files[n]`` index."""

    index: int
    filename: str
    content: bytes


@dataclass
class MessageBody:
    payload: dict[str, Any]
    files: dict[int, FilePart] = field(default_factory=dict)


async def read_json(request: web.Request) -> Any:
    if not request.can_read_body:
        return None
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise DiscordHTTPError(400, 50109, "The request body contains invalid JSON.") from exc


_BODY_KEY = request_key("fakediscord.message_body")


async def message_body(request: web.Request) -> MessageBody:
    """``read_message_body``, read once per request: a fault rule may look at the body before
    the route handler does (a multipart stream can be read only once)."""
    cached = request.get(_BODY_KEY)
    if cached is None:
        try:
            cached = await _read_message_body(request)
        except DiscordHTTPError as error:
            cached = error
        request[_BODY_KEY] = cached
    if isinstance(cached, DiscordHTTPError):
        raise cached
    return cached


async def read_message_body(request: web.Request) -> MessageBody:
    """The JSON payload and uploaded files of a message create/edit/callback request."""
    return await message_body(request)


async def _read_message_body(request: web.Request) -> MessageBody:
    if not request.content_type.startswith("multipart/"):
        body = await read_json(request)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise DiscordHTTPError(400, 50035, "Invalid Form Body")
        return MessageBody(payload=body)

    payload: dict[str, Any] = {}
    files: dict[int, FilePart] = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        name = part.name or ""
        if name == "payload_json":
            try:
                payload = json.loads(await part.text())
            except ValueError as exc:
                raise DiscordHTTPError(
                    400, 50109, "The request body contains invalid JSON."
                ) from exc
            continue
        match = _FILE_FIELD.match(name) or (re.match(r"^file(\d*)$", name))
        if match is None:
            raise DiscordHTTPError(400, 50035, f"Invalid Form Body: unexpected field {name!r}")
        index = int(match.group(1) or 0)
        content = await part.read(decode=False)
        files[index] = FilePart(
            index=index, filename=part.filename or f"file{index}", content=bytes(content)
        )
    return MessageBody(payload=payload, files=files)
