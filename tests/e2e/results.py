"""Reading results off the local Discord: which messages carry which job's images.

A result's files are named `job-<id>-<i>.png`. Job ids restart with each bot's database, so
tests that run several bots against one local Discord count only messages newer than `since`.
"""

from __future__ import annotations

from collections import Counter

from tests.e2e.fakediscord import FakeDiscord, MessageRecord


def has_images(message: MessageRecord) -> bool:
    return any(a.filename.startswith("job-") for a in message.attachments)


def job_of(message: MessageRecord) -> int:
    """The job whose images `message` carries."""
    return int(message.attachments[0].filename.split("-")[1])


def latest_message(fake: FakeDiscord) -> int:
    return max((m.id for m in fake.messages_in()), default=0)


def delivered_jobs(fake: FakeDiscord, since: int = 0) -> Counter[int]:
    """How many messages newer than message `since` carry each job's images (an edited
    message counts once)."""
    counts: Counter[int] = Counter()
    for message in fake.messages_in():
        if message.id > since:
            counts.update(
                {
                    int(a.filename.split("-")[1])
                    for a in message.attachments
                    if a.filename.startswith("job-")
                }
            )
    return counts
