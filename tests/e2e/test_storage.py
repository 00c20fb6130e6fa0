"""Storage failing under the bot: its outputs folder on a full disk (a 64 KiB tmpfs, filled,
mounted in a private mount namespace of the bot process)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from inference.testing import TinyModel
from tests.e2e.conftest import start_bot
from tests.e2e.fakediscord import CallbackType, FakeDiscord
from tests.e2e.results import has_images
from tests.e2e.test_bot import ephemeral_reply

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
WAIT = 60.0


def _can_unshare() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs unprivileged user+mount namespaces")
async def test_a_full_disk_fails_the_job_clearly_and_the_bot_recovers(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path: Path
) -> None:
    outputs = tmp_path / "data" / "outputs"
    outputs.mkdir(parents=True)
    fill = f'mount -t tmpfs -o size=64k tmpfs "{outputs}" || exit 1; '
    fill += f'dd if=/dev/zero of="{outputs}/fill" bs=4k 2>/dev/null; exec "$@"'
    bot = await start_bot(
        fake, tiny_model, tmp_path, wrapper=("unshare", "-rm", "sh", "-c", fill, "sh")
    )
    try:
        user = fake.add_user("disk_full")
        handle = fake.invoke_slash("imagine", {"prompt": "a full disk", "steps": 2}, user=user)
        deferred = CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
        assert await handle.wait_for_response(timeout=WAIT) == deferred
        final = await handle.wait_for_original(
            lambda m: "disk is full" in (m.content or ""), timeout=WAIT
        )
        assert "operator has been told" in final.content and not final.attachments
        job_id = int(re.search(r"job (\d+)", final.content).group(1))

        log = bot.log_text()
        errors = [line for line in log.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and f"job {job_id}" in errors[0], errors  # one line, with why
        assert "Traceback" not in log

        # Settled in the store, not stranded: /queue no longer lists it, /history says why.
        assert "nothing queued" in await ephemeral_reply(fake, "queue", {}, user=user)
        history = await ephemeral_reply(fake, "history", {}, user=user)
        assert f"**{job_id}**" in history and "disk is full" in history

        # While storage is broken, a new /imagine is told the same, not "something went wrong".
        reply = await ephemeral_reply(fake, "imagine", {"prompt": "again", "steps": 2}, user=user)
        assert "disk is full" in reply

        # The operator frees space: the next /imagine works, without a restart.
        assert bot.process is not None
        full = Path(f"/proc/{bot.process.pid}/root") / outputs.relative_to("/") / "fill"
        full.unlink()
        final = await (
            fake.invoke_slash("imagine", {"prompt": "room again", "steps": 2}, user=user)
        ).wait_for_original(has_images, timeout=WAIT)
        assert final.attachments
        assert await bot.stop() == 0
    finally:
        await bot.kill()
