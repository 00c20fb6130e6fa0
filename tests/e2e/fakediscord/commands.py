"""Registered application commands: validation as Discord does it, and typed invocation options."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .constants import MAX_CHOICES, MAX_OPTIONS, OptionType
from .errors import invalid_form_body

_NAME = re.compile(r"^[-_'\w]{1,32}$")
_SUBCOMMAND_TYPES = (OptionType.SUB_COMMAND, OptionType.SUB_COMMAND_GROUP)
_OPTION_TYPES = tuple(int(t) for t in OptionType)  # 1..11, ATTACHMENT included


@dataclass(eq=False)
class RegisteredCommand:
    """One command as the bot registered it (global when ``guild_id`` is None)."""

    id: int
    application_id: int
    guild_id: int | None
    payload: dict[str, Any]
    version: int

    @property
    def name(self) -> str:
        return str(self.payload["name"])

    @property
    def type(self) -> int:
        return int(self.payload.get("type", 1))

    @property
    def description(self) -> str:
        return str(self.payload.get("description", ""))

    @property
    def options(self) -> list[dict[str, Any]]:
        return list(self.payload.get("options") or [])

    def option(self, *path: str) -> dict[str, Any]:
        """The option at ``path`` (subcommand names, then the option name)."""
        options = self.options
        found: dict[str, Any] | None = None
        for name in path:
            found = next((o for o in options if o["name"] == name), None)
            if found is None:
                raise KeyError(f"/{self.name} has no option {'/'.join(path)}")
            options = list(found.get("options") or [])
        if found is None:
            raise KeyError("empty option path")
        return found

    def choices(self, *path: str) -> list[dict[str, Any]]:
        return list(self.option(*path).get("choices") or [])

    def to_payload(self) -> dict[str, Any]:
        payload = {
            "default_member_permissions": None,
            "dm_permission": True,
            "nsfw": False,
            "contexts": None,
            "integration_types": [0],
            "description": "",
            "options": [],
            **self.payload,
            "id": str(self.id),
            "application_id": str(self.application_id),
            "version": str(self.version),
            "type": self.type,
        }
        if self.guild_id is not None:
            payload["guild_id"] = str(self.guild_id)
        return payload


@dataclass
class CommandSync:
    """One bulk overwrite the bot made (``PUT .../commands``)."""

    guild_id: int | None
    names: list[str] = field(default_factory=list)


def validate_command(payload: Any, index: int | None = None) -> None:
    """Raise 400 50035 for what Discord would reject in a command payload."""
    errors: dict[str, Any] = {}
    if not isinstance(payload, dict):
        errors["_errors"] = [_err("DICT_TYPE_CONVERT", "Only dictionaries may be used")]
    else:
        _check_command(payload, errors)
    if errors:
        raise invalid_form_body({str(index): errors} if index is not None else errors)


def _check_command(payload: dict[str, Any], errors: dict[str, Any]) -> None:
    command_type = payload.get("type", 1)
    name = payload.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        errors["name"] = {"_errors": [_err("APPLICATION_COMMAND_INVALID_NAME", "Invalid name")]}
    elif command_type == 1 and name != name.lower():
        errors["name"] = {"_errors": [_err("APPLICATION_COMMAND_INVALID_NAME", "Lowercase")]}
    description = payload.get("description", "")
    if command_type == 1 and not (isinstance(description, str) and 1 <= len(description) <= 100):
        errors["description"] = {
            "_errors": [_err("BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")]
        }
    option_errors = _check_options(payload.get("options") or [])
    if option_errors:
        errors["options"] = option_errors


def _check_options(options: list[Any]) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    if len(options) > MAX_OPTIONS:
        errors["_errors"] = [_err("BASE_TYPE_MAX_LENGTH", f"Must be {MAX_OPTIONS} or fewer.")]
    seen: set[str] = set()
    optional_seen = False
    for index, option in enumerate(options):
        problems: dict[str, Any] = {}
        name = option.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name != name.lower():
            problems["name"] = {"_errors": [_err("APPLICATION_COMMAND_INVALID_NAME", "Bad name")]}
        elif name in seen:
            problems["name"] = {
                "_errors": [_err("APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", name)]
            }
        seen.add(str(name))
        if option.get("type") not in _OPTION_TYPES:
            problems["type"] = {
                "_errors": [_err("BASE_TYPE_CHOICES", f"Value must be one of {_OPTION_TYPES}.")]
            }
        description = option.get("description")
        if not (isinstance(description, str) and 1 <= len(description) <= 100):
            problems["description"] = {"_errors": [_err("BASE_TYPE_BAD_LENGTH", "1 to 100")]}
        if option.get("required"):
            if optional_seen:
                problems["required"] = {
                    "_errors": [
                        _err(
                            "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                            "Required options must be placed before non-required options",
                        )
                    ]
                }
        elif option.get("type") not in _SUBCOMMAND_TYPES:
            optional_seen = True
        choices = option.get("choices") or []
        if len(choices) > MAX_CHOICES:
            problems["choices"] = {
                "_errors": [_err("BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CHOICES} or fewer.")]
            }
        if choices and option.get("autocomplete"):
            problems["autocomplete"] = {
                "_errors": [
                    _err(
                        "APPLICATION_COMMAND_AUTOCOMPLETE_INVALID",
                        "Autocomplete cannot be set with choices",
                    )
                ]
            }
        nested = _check_options(option.get("options") or [])
        if nested:
            problems["options"] = nested
        if problems:
            errors[str(index)] = problems
    return errors


def validate_choices(choices: Any) -> list[dict[str, Any]]:
    """Check an autocomplete result as Discord does; return it."""
    if not isinstance(choices, list):
        raise invalid_form_body(
            {"data": {"choices": {"_errors": [_err("LIST_TYPE_CONVERT", "Must be a list")]}}}
        )
    if len(choices) > MAX_CHOICES:
        raise invalid_form_body(
            {
                "data": {
                    "choices": {
                        "_errors": [
                            _err(
                                "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CHOICES} or fewer in length."
                            )
                        ]
                    }
                }
            }
        )
    for index, choice in enumerate(choices):
        name = choice.get("name") if isinstance(choice, dict) else None
        if not (isinstance(name, str) and 1 <= len(name) <= 100):
            raise invalid_form_body(
                {
                    "data": {
                        "choices": {
                            str(index): {
                                "name": {"_errors": [_err("BASE_TYPE_BAD_LENGTH", "1 to 100")]}
                            }
                        }
                    }
                }
            )
        value = choice.get("value")
        if isinstance(value, str) and len(value) > 100:
            raise invalid_form_body(
                {
                    "data": {
                        "choices": {
                            str(index): {
                                "value": {"_errors": [_err("BASE_TYPE_BAD_LENGTH", "at most 100")]}
                            }
                        }
                    }
                }
            )
    return choices


def _err(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


# --- building the ``data.options`` of an invocation -------------------------------------------

# Turns a Python value given to ``invoke_slash`` into (option value, resolved additions).
Resolver = Callable[[int, Any], tuple[Any, dict[str, dict[str, Any]]]]


def build_invocation_options(
    command: RegisteredCommand,
    path: list[str],
    values: Mapping[str, Any],
    resolve: Resolver,
    *,
    focused: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The ``options`` and ``resolved`` of an interaction that invokes ``command``.

    ``path`` names the subcommand (group, then subcommand). Values are checked against the
    registered option types, choices and ``required`` flags, as Discord's client would (a
    wrong value is a bug in the test, so this raises ``ValueError``). With ``focused`` set
    (autocomplete), that option is sent as the raw string typed so far and nothing is
    required.
    """
    resolved: dict[str, dict[str, Any]] = {}
    specs = command.options
    chain: list[dict[str, Any]] = []
    for name in path:
        spec = next(
            (o for o in specs if o["name"] == name and o.get("type") in _SUBCOMMAND_TYPES), None
        )
        if spec is None:
            raise ValueError(f"/{command.name} has no subcommand {name!r}")
        chain.append(spec)
        specs = list(spec.get("options") or [])
    if any(o.get("type") in _SUBCOMMAND_TYPES for o in specs):
        raise ValueError(f"/{command.name} needs a subcommand: {[o['name'] for o in specs]}")

    leaf: list[dict[str, Any]] = []
    by_name = {spec["name"]: spec for spec in specs}
    for name, raw in values.items():
        spec = by_name.get(name)
        if spec is None:
            raise ValueError(f"/{command.name} has no option {name!r}; it has {sorted(by_name)}")
        option_type = int(spec["type"])
        option: dict[str, Any] = {"name": name, "type": option_type}
        if name == focused:
            option["value"] = str(raw)
            option["focused"] = True
        else:
            value, extra = _typed_value(command.name, spec, raw, resolve)
            option["value"] = value
            for key, items in extra.items():
                resolved.setdefault(key, {}).update(items)
        leaf.append(option)
    if focused is None:
        missing = [s["name"] for s in specs if s.get("required") and s["name"] not in values]
        if missing:
            raise ValueError(f"/{command.name} is missing required options {missing}")
    elif focused not in by_name or not by_name[focused].get("autocomplete"):
        raise ValueError(f"option {focused!r} of /{command.name} has no autocomplete")

    options = leaf
    for spec in reversed(chain):
        options = [{"name": spec["name"], "type": int(spec["type"]), "options": options}]
    return options, resolved


def _typed_value(
    command: str, spec: dict[str, Any], raw: Any, resolve: Resolver
) -> tuple[Any, dict[str, dict[str, Any]]]:
    option_type = int(spec["type"])
    name = spec["name"]
    if option_type == OptionType.STRING:
        if not isinstance(raw, str):
            raise ValueError(f"/{command} {name}: expected str, got {raw!r}")
        _check_length(command, spec, raw)
        value: Any = raw
    elif option_type == OptionType.INTEGER:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"/{command} {name}: expected int, got {raw!r}")
        _check_range(command, spec, raw)
        value = raw
    elif option_type == OptionType.NUMBER:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError(f"/{command} {name}: expected a number, got {raw!r}")
        _check_range(command, spec, raw)
        value = raw
    elif option_type == OptionType.BOOLEAN:
        if not isinstance(raw, bool):
            raise ValueError(f"/{command} {name}: expected bool, got {raw!r}")
        value = raw
    else:
        return resolve(option_type, raw)
    choices = spec.get("choices")
    if choices and value not in [choice["value"] for choice in choices]:
        raise ValueError(f"/{command} {name}: {value!r} is not one of the registered choices")
    return value, {}


def _check_length(command: str, spec: dict[str, Any], value: str) -> None:
    low, high = spec.get("min_length", 0), spec.get("max_length", 6000)
    if not low <= len(value) <= high:
        raise ValueError(f"/{command} {spec['name']}: length {len(value)} outside [{low}, {high}]")


def _check_range(command: str, spec: dict[str, Any], value: float) -> None:
    low, high = spec.get("min_value"), spec.get("max_value")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"/{command} {spec['name']}: {value} outside [{low}, {high}]")
