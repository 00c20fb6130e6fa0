"""The bot on Ray with two workers: a worker's process is killed while it generates, and every
user still gets exactly one result, from the worker that replaced it or the other one. And the
bot joining a cluster started with `ray start`, as on several machines, which it leaves running.

(The whole e2e suite also runs with `IMAGINE_BOT__WORKERS__BACKEND=ray`: README's test command.)
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from inference.testing import TinyModel
from tests.e2e.botprocess import BotProcess
from tests.e2e.conftest import start_bot
from tests.e2e.fakediscord import CallbackType, FakeDiscord, InteractionHandle
from tests.e2e.results import delivered_jobs, has_images, latest_message
from tests.e2e.test_bot import ephemeral_reply

pytest.importorskip("ray")

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]
WAIT = 120.0

RAY_WORKERS = """
[workers]
backend = "ray"
count = 2

[limits]
max_steps = 1000
"""


async def log_match(bot: BotProcess, pattern: str, timeout: float = WAIT) -> re.Match[str]:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if match := re.search(pattern, bot.log_text()):
            return match
        await asyncio.sleep(0.2)
    raise AssertionError(f"no log line matching {pattern!r}:\n{bot.log_text()[-3000:]}")


def shows_steps(handle: InteractionHandle, _: FakeDiscord) -> bool:
    return handle.original is not None and any("step" in c for c in handle.original.contents)


async def test_a_worker_killed_mid_job_costs_nobody_their_image(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path: Path
) -> None:
    since = latest_message(fake)
    bot = await start_bot(fake, tiny_model, tmp_path, RAY_WORKERS)
    try:
        pids = {
            name: int(pid)
            for name, pid in re.findall(
                r"worker (ray \d): Ray actor started in process (\d+)", bot.log_text()
            )
        }
        assert set(pids) == {"ray 0", "ray 1"}, bot.log_text()[-3000:]
        users = [fake.add_user(f"ray_worker_user_{i}") for i in range(3)]
        handles = []
        for i, user in enumerate(users):
            handle = fake.invoke_slash("imagine", {"prompt": f"kite {i}", "steps": 400}, user=user)
            assert (
                await handle.wait_for_response(timeout=WAIT)
                == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
            )
            handles.append(handle)
            if i == 0:  # job 1: wait until its steps show, so it is mid-batch when killed
                await fake.wait_for(functools.partial(shows_steps, handle), timeout=WAIT)
        running = await log_match(bot, r"jobs \[1\]: generating \(1 images\) on (ray \d)")
        # /queue counts both workers.
        assert "on 2 workers" in await ephemeral_reply(fake, "queue", {}, user=users[0])
        os.kill(pids[running.group(1)], signal.SIGKILL)
        await log_match(bot, rf"worker {running.group(1)} died running jobs \[1\]")
        finals = [await h.wait_for_original(has_images, timeout=WAIT) for h in handles]
        assert all(final.attachments for final in finals)
        await log_match(bot, rf"worker {running.group(1)} replaced")
        assert "Traceback" not in "".join(c for f in finals for c in f.contents)
        # Each job's images were posted once, and job 1 ran again rather than failing.
        assert delivered_jobs(fake, since) == {1: 1, 2: 1, 3: 1}
        assert "job 1: back at the front of the line" in bot.log_text()
        # Both workers, the replacement too, take the next two jobs at once; and /cancel,
        # twice, stops both (the second is not spent on the job the first already stops).
        both = [
            fake.invoke_slash("imagine", {"prompt": f"after {i}", "steps": 900}, user=users[0])
            for i in range(2)
        ]
        for handle in both:
            await fake.wait_for(functools.partial(shows_steps, handle), timeout=WAIT)
        workers = {
            (await log_match(bot, rf"jobs \[{job}\]: generating \(1 images\) on (ray \d)")).group(1)
            for job in (4, 5)
        }
        assert workers == {"ray 0", "ray 1"}
        replies = [await ephemeral_reply(fake, "cancel", {}, user=users[0]) for _ in both]
        assert replies == [
            "🚫 Job 5 will stop at its next step.",
            "🚫 Job 4 will stop at its next step.",
        ]
        await fake.wait_for(
            lambda f: all("Cancelled" in (h.original.content if h.original else "") for h in both),
            timeout=WAIT,
        )
        assert bot.process is not None
        ray_processes = psutil.Process(bot.process.pid).children(recursive=True)
        assert any("raylet" in p.name() for p in ray_processes)
        code = await bot.stop()
        assert code == 0, bot.log_text()[-3000:]
        # Shutdown ended the private Ray instance: none of its processes is left.
        _, alive = psutil.wait_procs(ray_processes, timeout=60)
        assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        await bot.kill()


@pytest.fixture
def started_cluster() -> Iterator[str]:
    """`ray start --head` as an operator runs it; the address it tells other machines.
    Stopped afterwards by killing its own processes (`ray stop` would stop every Ray here)."""
    temp_dir = Path(f"/tmp/ray-e2e-{os.getpid()}")  # Ray's socket paths must stay short
    command = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", "--port=0",
        "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    started = subprocess.run(command, capture_output=True, text=True, timeout=120)
    output = started.stdout + started.stderr
    try:
        assert started.returncode == 0, output[-2000:]
        address = re.search(r"ray start --address='([^']+)'", output)
        assert address is not None, output[-2000:]
        yield address.group(1)
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if any(str(temp_dir) in part for part in process.info["cmdline"] or ()):
                process.kill()


def cluster_alive(temp_dir_part: str) -> bool:
    return any(
        p.info["name"] == "gcs_server"
        and any(temp_dir_part in part for part in p.info["cmdline"] or ())
        for p in psutil.process_iter(["name", "cmdline"])
    )


async def test_the_bot_joins_a_cluster_started_with_ray_start_and_leaves_it_running(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path: Path, started_cluster: str
) -> None:
    config = f'[workers]\nbackend = "ray"\ncount = 2\nray_address = "{started_cluster}"\n'
    bot = await start_bot(fake, tiny_model, tmp_path, config)
    try:
        assert f"Ray: joined {started_cluster}" in bot.log_text()
        user = fake.add_user("ray_cluster_user")
        handle = fake.invoke_slash("imagine", {"prompt": "a lighthouse", "steps": 3}, user=user)
        final = await handle.wait_for_original(has_images, timeout=WAIT)
        assert final.attachments[0].content.startswith(b"\x89PNG")
        assert re.search(r"jobs \[1\]: generating \(1 images\) on ray \d", bot.log_text())
        assert await bot.stop() == 0, bot.log_text()[-3000:]
    finally:
        await bot.kill()
    # The operator's cluster is still up after the bot left it.
    assert cluster_alive(f"ray-e2e-{os.getpid()}")
