"""Errors the fake answers with, shaped like Discord's JSON error bodies."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .constants import ErrorCode
from .util import json_response


class DiscordHTTPError(Exception):
    """Raised by a route handler; the REST layer turns it into ``{"code", "message"}`` JSON."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def to_response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return json_response(body, status=self.status)


def unauthorized() -> DiscordHTTPError:
    return DiscordHTTPError(401, ErrorCode.GENERAL, "401: Unauthorized")


def not_found(code: ErrorCode, what: str) -> DiscordHTTPError:
    return DiscordHTTPError(404, code, what)


def unknown_message() -> DiscordHTTPError:
    return not_found(ErrorCode.UNKNOWN_MESSAGE, "Unknown Message")


def unknown_channel() -> DiscordHTTPError:
    return not_found(ErrorCode.UNKNOWN_CHANNEL, "Unknown Channel")


def unknown_webhook() -> DiscordHTTPError:
    return not_found(ErrorCode.UNKNOWN_WEBHOOK, "Unknown Webhook")


def unknown_interaction() -> DiscordHTTPError:
    return not_found(ErrorCode.UNKNOWN_INTERACTION, "Unknown interaction")


def invalid_webhook_token() -> DiscordHTTPError:
    return DiscordHTTPError(401, ErrorCode.INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")


def missing_permissions() -> DiscordHTTPError:
    return DiscordHTTPError(403, ErrorCode.MISSING_PERMISSIONS, "Missing Permissions")


def invalid_form_body(errors: dict[str, Any]) -> DiscordHTTPError:
    """400 50035 with Discord's nested ``errors`` object (``{"field": {"_errors": [...]}}``)."""
    return DiscordHTTPError(400, ErrorCode.INVALID_FORM_BODY, "Invalid Form Body", errors=errors)


def field_error(path: str, message: str, code: str = "BASE_TYPE_INVALID") -> DiscordHTTPError:
    """One invalid field, ``path`` dotted (``"data.choices"``) as Discord nests it."""
    tree: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path.split(".")):
        tree = {part: tree}
    return invalid_form_body(tree)
