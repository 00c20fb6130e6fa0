"""Errors whose message is written for the person who asked for the image.

The bot shows `str(error)` of any InferenceError as-is; everything else is an internal
failure that is logged and reported only by job id.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base class: the message is safe and useful to show a user."""


class InvalidRequestError(InferenceError):
    """A request option is out of range or malformed. `field` names the option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message

    def __reduce__(self) -> tuple[type[InvalidRequestError], tuple[str, str]]:
        # Errors cross to the bot's process from a Ray worker pickled; the default would
        # call __init__ with the one formatted message.
        return (type(self), (self.field, self.reason))


class ModelError(InferenceError):
    """The model cannot be used: unknown name, missing file, bad checkpoint, no network."""


class UnknownModelError(ModelError):
    pass


class CheckpointError(ModelError):
    """Missing, truncated, corrupt or unrecognised checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint, refused because loading it can run arbitrary code."""


class HubUnavailableError(ModelError):
    """A hub id was named but the hub cannot be reached (offline)."""


class GenerationCancelled(InferenceError):
    def __init__(self, message: str = "generation cancelled") -> None:
        super().__init__(message)


class QueueFullError(InferenceError):
    pass


class JobNotFoundError(InferenceError):
    pass


class NotYourJobError(InferenceError):
    """Only the requester or a moderator may cancel a job."""


class StorageUnavailableError(InferenceError):
    """The bot cannot keep images or jobs: its disk is full or its storage refuses writes."""

    @classmethod
    def because(cls, *, disk_full: bool) -> StorageUnavailableError:
        """The one wording users see, whichever part of the storage failed."""
        if disk_full:
            return cls("the bot's disk is full; an operator has been told")
        return cls(
            "the bot cannot save images right now (its storage refuses writes); "
            "an operator has been told"
        )


class GenerationFailedError(InferenceError):
    """The generation itself failed (out of memory after the retry, a backend error)."""


class WorkerUnavailableError(InferenceError):
    """A worker (a Ray actor) could not start: no room on the cluster, or it crashed."""
