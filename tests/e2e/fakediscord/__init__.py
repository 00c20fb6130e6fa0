"""A local Discord-compatible server (REST v10 + gateway v10) for end-to-end tests.

The real bot connects to it over real sockets on 127.0.0.1; tests play the users through
``FakeDiscord``'s driver methods and assert on what the server recorded.
"""

from .commands import CommandSync, RegisteredCommand
from .constants import CallbackType, Intent, MessageFlag, Permission
from .discordpy import pointed_at
from .faults import FaultKind, FaultRule, uploads_matching
from .gateway import ConnectionInfo, GatewaySession
from .interactions import InteractionHandle
from .models import (
    Attachment,
    Channel,
    Guild,
    Member,
    MessageRecord,
    MessageRevision,
    PermissionOverwrite,
    Role,
    Upload,
    User,
)
from .multipart import FilePart, MessageBody
from .rest import RequestRecord
from .server import FakeDiscord

__all__ = [
    "Attachment",
    "CallbackType",
    "Channel",
    "CommandSync",
    "ConnectionInfo",
    "FakeDiscord",
    "FaultKind",
    "FaultRule",
    "FilePart",
    "GatewaySession",
    "Guild",
    "Intent",
    "InteractionHandle",
    "Member",
    "MessageBody",
    "MessageFlag",
    "MessageRecord",
    "MessageRevision",
    "Permission",
    "PermissionOverwrite",
    "RegisteredCommand",
    "RequestRecord",
    "Role",
    "Upload",
    "User",
    "pointed_at",
    "uploads_matching",
]
