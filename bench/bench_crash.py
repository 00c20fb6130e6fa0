"""Crashes and stops at bad moments: is every accepted job delivered exactly once?

    python -m bench.bench_crash                       # 10 trials x 4 kinds; appends a row
    python -m bench.bench_crash --no-record           # print only
    python -m bench.bench_crash --trials 2 --no-record  # a quick look

The real bot process (`python -m bot run`, tiny random model) runs against the local Discord
of the e2e tests. A trial: 3 new users fire 2 /imagine each at once; the bot is then killed
(SIGKILL) or stopped (SIGTERM) at one of two moments:

- random: a uniformly random time between the burst and the moment a burst is normally all
  delivered (measured once per kind, with no kill, before the trials);
- upload: while the upload of a finished image hangs. The local Discord stalls the first
  request that uploads a `job-<id>-<i>.png` (an edit of the interaction's response or a
  channel post) and the bot is killed while that request is held; the request never arrives.

Then the same bot is started again (same config, same data folder) and given time to settle:
until every accepted job is delivered or visibly failed, and the bot has gone quiet. Accepted
jobs are those in the bot's store (matched by their unique prompts), plus any interaction
acknowledged without a stored job. Per job: delivered = a message carried its image (edits of
one message count once, deleted messages count), twice = two or more such messages, failed
with notice = a message names the job (`job <id>`) with ❌/⚠️/🚫, lost = neither.
Unacknowledged interactions with no stored job are counted apart: Discord showed those users
"The application did not respond", nothing was promised.

Goal: 0 lost and 0 delivered twice. The retry pauses and the SIGTERM grace are shortened in
the config (see `crash_config`) so that trials take seconds, not minutes; nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench.common import (
    append_row,
    commit,
    deliveries,
    device,
    print_table,
    today,
    wait_quiet,
)
from inference.testing import TinyModel
from tests.e2e.botprocess import BotProcess, start_bot, wait_until_ready
from tests.e2e.fakediscord import (
    CallbackType,
    FakeDiscord,
    InteractionHandle,
    MessageRecord,
    uploads_matching,
)

SECTION = "## Crash and restart"
BOT_START_TIMEOUT = 180.0
# Where a result goes: an edit of the interaction's response (or of the bot's message), or a
# channel post.
UPLOAD_ROUTES = r"/(webhooks/\d+/[^/]+/messages/[^/]+|channels/\d+/messages(/\d+)?)$"
JOB_FILE = r"^job-\d+-\d+\.png$"
FAILURE_MARKERS = ("❌", "⚠️", "🚫")
JOB_IN_TEXT = re.compile(r"\bjob (\d+)\b")
KINDS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}
MOMENTS = ("random", "upload")


def crash_config(grace_s: float) -> str:
    return f"""
[queue]
max_queued = 200
max_queued_per_user = 10

[rate_limits]
images_per_window = 100000

[limits]
max_steps = 1000

[delivery]
attempt_timeout_s = 15.0
retry_delays_s = [1, 2, 5]
shutdown_grace_s = {grace_s}
"""


@dataclass
class Trial:
    kind: str
    moment: str
    index: int
    kill_after_s: float = 0.0  # from the burst to the signal
    delivered_before: int = 0  # jobs delivered when the signal went
    accepted: int = 0
    once: int = 0
    twice: int = 0
    noticed: int = 0  # failed, with a notice that names the job
    lost: int = 0
    unacked: int = 0  # never acknowledged, no job stored: refused, as Discord shows it
    exit_code: int | str | None = None
    stop_s: float = 0.0  # signal -> the process gone
    settle_s: float = 0.0  # restart -> settled
    settled: bool = False
    source: str = "store"  # where accepted jobs came from: the bot's store, or Discord only
    lost_jobs: list[int] = field(default_factory=list)
    twice_jobs: list[int] = field(default_factory=list)
    error: str | None = None

    def line(self) -> str:
        text = (
            f"{self.kind} {self.moment} #{self.index + 1}: killed at +{self.kill_after_s:.2f} s "
            f"({self.delivered_before} delivered before), exit {self.exit_code} after "
            f"{self.stop_s:.1f} s; accepted "
            f"{self.accepted}: once {self.once}, twice+ {self.twice}, noticed {self.noticed}, "
            f"lost {self.lost}, unacked {self.unacked}; settled in {self.settle_s:.1f} s"
        )
        if not self.settled:
            text += " (NOT settled)"
        if self.lost_jobs or self.twice_jobs:
            text += f"; lost jobs {self.lost_jobs}, twice {self.twice_jobs}"
        if self.source != "store":
            text += f" [accepted jobs from {self.source}]"
        if self.error:
            text += f"; ERROR {self.error}"
        return text


# --- who asked for what, and what came of it ---------------------------------------------------


@dataclass
class Submission:
    prompt: str
    handle: InteractionHandle


def stored_jobs(database: Path, prompts: list[str]) -> dict[str, list[int]]:
    """Job ids per prompt in the bot's store (read-only; the bot keeps running)."""
    uri = f"file:{database}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=10) as connection:
        marks = ",".join("?" * len(prompts))
        rows = connection.execute(
            f"SELECT id, prompt FROM jobs WHERE prompt IN ({marks})", prompts
        ).fetchall()
    found: dict[str, list[int]] = {}
    for job_id, prompt in rows:
        found.setdefault(prompt, []).append(int(job_id))
    return found


def jobs_named(message: MessageRecord) -> set[int]:
    """Jobs a message named in any revision ("… (job 42)")."""
    return {int(j) for r in message.history for j in JOB_IN_TEXT.findall(r.content)}


def noticed_jobs(messages: list[MessageRecord]) -> set[int]:
    """Jobs some message reported as failed: it names the job and carries a failure marker."""
    found: set[int] = set()
    for message in messages:
        for revision in message.history:
            if any(marker in revision.content for marker in FAILURE_MARKERS):
                found |= {int(j) for j in JOB_IN_TEXT.findall(revision.content)}
    return found


@dataclass
class Outcome:
    accepted: set[int]
    orphans: int  # acknowledged, but no job stored or shown: lost from the user's view
    unacked: int
    counts: Counter[int]
    noticed: set[int]
    source: str

    @property
    def delivered(self) -> set[int]:
        return {j for j in self.accepted if self.counts[j] >= 1}

    @property
    def lost_jobs(self) -> list[int]:
        return sorted(self.accepted - self.delivered - self.noticed)

    @property
    def lost(self) -> int:
        return len(self.lost_jobs) + self.orphans

    @property
    def twice_jobs(self) -> list[int]:
        return sorted(j for j in self.accepted if self.counts[j] >= 2)


async def outcome(fake: FakeDiscord, database: Path, submissions: list[Submission]) -> Outcome:
    messages = fake.messages
    try:
        by_prompt = await asyncio.to_thread(stored_jobs, database, [s.prompt for s in submissions])
        source = "store"
    except sqlite3.Error as error:
        # No store to read (schema changed?): what Discord showed is all there is.
        by_prompt = {}
        for s in submissions:
            original = s.handle.original
            shown = (jobs_named(original) if original else set()) | set(
                deliveries([original] if original else []).keys()
            )
            if shown:
                by_prompt[s.prompt] = sorted(shown)
        source = f"Discord ({type(error).__name__}: {error})"
    accepted: set[int] = set()
    orphans = unacked = 0
    for s in submissions:
        jobs = by_prompt.get(s.prompt, [])
        accepted.update(jobs)
        if jobs:
            continue
        if s.handle.callback_type == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE:
            orphans += 1  # "thinking…" forever
        elif not s.handle.responded:
            unacked += 1
    return Outcome(accepted, orphans, unacked, deliveries(messages), noticed_jobs(messages), source)


# --- one kind x moment: a bot, a calibration, the trials ---------------------------------------


class Group:
    def __init__(
        self,
        args: argparse.Namespace,
        tiny: TinyModel,
        directory: Path,
        kind: str,
        moment: str,
        rng: random.Random,
    ) -> None:
        self.args = args
        self.tiny = tiny
        self.directory = directory
        self.kind = kind
        self.moment = moment
        self.rng = rng
        self.database = directory / "data" / "imagine-bot.sqlite3"
        self.trials: list[Trial] = []
        self.window_s = 0.0

    def burst(self, fake: FakeDiscord, tag: str) -> list[Submission]:
        users = [fake.add_user(f"{tag}-u{u}") for u in range(self.args.users)]
        submissions = []
        for j in range(self.args.jobs_per_user):
            for u, user in enumerate(users):
                prompt = f"crash bench {tag} user {u} image {j}"
                options = {"prompt": prompt, "steps": self.args.steps}
                submissions.append(
                    Submission(prompt, fake.invoke_slash("imagine", options, user=user))
                )
        return submissions

    async def settle(
        self, fake: FakeDiscord, submissions: list[Submission]
    ) -> tuple[Outcome, bool]:
        """Poll until nothing is lost any more (or the timeout), then wait for quiet."""
        deadline = time.monotonic() + self.args.settle_timeout
        settled = False
        while True:
            result = await outcome(fake, self.database, submissions)
            # Every interaction answered or past its 3 s (no job can appear for it later),
            # and every accepted job delivered or noticed.
            resolved = all(s.handle.responded or s.handle.ack_window_closed for s in submissions)
            if resolved and result.lost == 0:
                settled = True
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        left = max(1.0, deadline - time.monotonic())
        if settled:
            settled = await wait_quiet(fake, self.args.quiet, timeout=left + self.args.quiet)
        return await outcome(fake, self.database, submissions), settled

    async def calibrate(self, fake: FakeDiscord) -> None:
        """How long a burst takes to be delivered with no kill: the random moments' range."""
        started = time.monotonic()
        submissions = self.burst(fake, f"{self.kind}-{self.moment}-calibration")
        result, settled = await self.settle(fake, submissions)
        self.window_s = time.monotonic() - started - (self.args.quiet if settled else 0.0)
        print(
            f"{self.kind} {self.moment}: a burst with no kill is delivered in "
            f"{self.window_s:.1f} s (lost {result.lost}, twice {len(result.twice_jobs)})",
            flush=True,
        )

    async def signal_bot(self, bot: BotProcess, trial: Trial) -> None:
        sig = KINDS[self.kind]
        timeout = self.args.grace + 60.0
        try:
            trial.exit_code = await bot.stop(sig, timeout=timeout)
        except TimeoutError:
            trial.exit_code = f"hung > {timeout:.0f} s"
            await bot.kill()

    async def trial(self, fake: FakeDiscord, bot: BotProcess, index: int) -> Trial:
        trial = Trial(self.kind, self.moment, index)
        rule = None
        if self.moment == "upload":
            rule = fake.stall_requests(
                None, UPLOAD_ROUTES, seconds=3600, predicate=uploads_matching(JOB_FILE)
            )
        watermark = max((m.id for m in fake.messages), default=0)
        started = time.monotonic()
        submissions = self.burst(fake, f"{self.kind}-{self.moment}-{index}")
        try:
            if rule is None:
                await asyncio.sleep(self.rng.uniform(0.0, self.window_s))
            else:
                try:
                    await fake.wait_for(lambda _: rule.hits, timeout=self.args.upload_wait)
                except TimeoutError:
                    trial.error = f"no upload stalled within {self.args.upload_wait:.0f} s"
            trial.kill_after_s = time.monotonic() - started
            trial.delivered_before = len(deliveries(m for m in fake.messages if m.id > watermark))
            signalled = time.monotonic()
            await self.signal_bot(bot, trial)
            trial.stop_s = time.monotonic() - signalled
        finally:
            if rule is not None:
                rule.stop()
        restarted = time.monotonic()
        await bot.start()
        await wait_until_ready(fake, bot, BOT_START_TIMEOUT)
        result, trial.settled = await self.settle(fake, submissions)
        trial.settle_s = time.monotonic() - restarted
        trial.accepted = len(result.accepted) + result.orphans
        trial.once = sum(1 for j in result.accepted if result.counts[j] == 1)
        trial.twice = len(result.twice_jobs)
        trial.noticed = len((result.accepted - result.delivered) & result.noticed)
        trial.lost = result.lost
        trial.unacked = result.unacked
        trial.lost_jobs = result.lost_jobs
        trial.twice_jobs = result.twice_jobs
        trial.source = result.source
        return trial

    async def run(self) -> None:
        config = crash_config(self.args.grace)
        async with FakeDiscord() as fake:
            bot: BotProcess | None = None
            try:
                bot = await start_bot(
                    fake, self.tiny, self.directory, config, timeout=BOT_START_TIMEOUT
                )
                if self.moment == "random":
                    await self.calibrate(fake)
                for index in range(self.args.trials):
                    try:
                        trial = await self.trial(fake, bot, index)
                    except Exception as error:  # the bot would not come back: stop here
                        trial = Trial(self.kind, self.moment, index, error=repr(error)[:300])
                        self.trials.append(trial)
                        print(trial.line(), flush=True)
                        print(bot.log_text()[-2000:], flush=True)
                        break
                    self.trials.append(trial)
                    print(trial.line(), flush=True)
                if fake.unknown_requests:
                    print(f"warning: routes the local Discord lacks: {fake.unknown_requests[:5]}")
            finally:
                if bot is not None:
                    await bot.kill()


# --- main -------------------------------------------------------------------------------------


def summary_row(group: Group) -> list[str]:
    t = group.trials
    codes = Counter(str(x.exit_code) for x in t)
    return [
        group.kind,
        group.moment,
        str(len(t)),
        str(sum(x.accepted for x in t)),
        str(sum(x.once for x in t)),
        str(sum(x.twice for x in t)),
        str(sum(x.noticed for x in t)),
        str(sum(x.lost for x in t)),
        str(sum(x.unacked for x in t)),
        ", ".join(f"{code}×{n}" for code, n in sorted(codes.items())),
        f"{statistics.median(x.stop_s for x in t):.1f}" if t else "",
        f"{statistics.median(x.settle_s for x in t):.1f}" if t else "",
        str(sum(1 for x in t if x.error or not x.settled)),
    ]


async def run(args: argparse.Namespace, scratch: Path, tiny: TinyModel) -> list[Group]:
    rng = random.Random(args.seed)
    groups = []
    for kind in args.kinds:
        for moment in args.moments:
            directory = scratch / f"{kind}-{moment}"
            directory.mkdir()
            group = Group(args, tiny, directory, kind, moment, rng)
            groups.append(group)
            await group.run()
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="per kind and moment")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--moments", nargs="+", choices=MOMENTS, default=list(MOMENTS))
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--jobs-per-user", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--grace", type=float, default=3.0, help="[delivery] shutdown_grace_s")
    parser.add_argument("--settle-timeout", type=float, default=90.0)
    parser.add_argument("--upload-wait", type=float, default=60.0)
    parser.add_argument("--quiet", type=float, default=3.0, help="s without a request = idle")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="keep logs and data here (a new folder)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")

    from inference.testing import save_tiny_model

    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        if args.workdir is not None:  # keep the bots' logs and stores to look at
            scratch = Path(args.workdir)
            scratch.mkdir(parents=True, exist_ok=False)
        tiny = save_tiny_model(scratch / "model", "sd1")
        groups = asyncio.run(run(args, scratch, tiny))

    columns = [
        "signal",
        "moment",
        "trials",
        "accepted",
        "once",
        "twice+",
        "failed, noticed",
        "lost",
        "unacked",
        "exit codes",
        "stop s (median)",
        "settle s (median)",
        "trial errors",
    ]
    print(
        f"\n{args.users} users x {args.jobs_per_user} /imagine per trial, tiny 64², "
        f"{args.steps} steps, SIGTERM grace {args.grace:g} s"
    )
    print_table(columns, [summary_row(g) for g in groups])
    trials = [t for g in groups for t in g.trials]
    lost, twice = sum(t.lost for t in trials), sum(t.twice for t in trials)
    broken = sum(1 for t in trials if t.error or not t.settled)
    ok = lost == 0 and twice == 0 and broken == 0
    print(
        f"goal 0 lost, 0 twice: {'met' if ok else 'NOT met'} ({lost} lost, {twice} twice, "
        f"{broken} trial(s) with an error or not settled)"
    )

    if not args.no_record:

        def cell(kind: str, moment: str) -> str:
            group = next((g for g in groups if (g.kind, g.moment) == (kind, moment)), None)
            if group is None:
                return "not run"
            t = group.trials
            return (
                f"{len(t)} trials: {sum(x.accepted for x in t)} accepted, "
                f"{sum(x.twice for x in t)} twice, {sum(x.lost for x in t)} lost"
            )

        term = [t for t in trials if t.kind == "SIGTERM"]
        append_row(
            SECTION,
            "`python -m bench.bench_crash`: the real bot process against the local Discord, "
            "tiny random model. A trial: 3 users fire 2 /imagine each; the bot gets SIGKILL or "
            "SIGTERM at a random moment (within the time a burst takes to be delivered) or "
            "while the upload of a finished image hangs (the local Discord stalls it; it never "
            "arrives); then the same bot restarts (same data folder) and settles. Per accepted "
            "job (the bot's store, plus interactions acknowledged without a job): twice = its "
            "image in two or more messages, lost = neither delivered nor a failure notice "
            "naming it. Config: [delivery] retry_delays_s = [1, 2, 5], shutdown_grace_s = "
            f"{args.grace:g} (short, for speed). Goal: 0 lost, 0 twice.",
            [
                "date (UTC)",
                "device",
                "commit",
                "SIGKILL random",
                "SIGKILL during upload",
                "SIGTERM random",
                "SIGTERM during upload",
                "SIGTERM exit codes",
                "goal",
            ],
            [
                today(),
                device(),
                commit(),
                cell("SIGKILL", "random"),
                cell("SIGKILL", "upload"),
                cell("SIGTERM", "random"),
                cell("SIGTERM", "upload"),
                ", ".join(
                    f"{c}×{n}" for c, n in sorted(Counter(str(t.exit_code) for t in term).items())
                )
                or "-",
                f"{'met' if ok else 'NOT met'} ({lost} lost, {twice} twice, {broken} broken)",
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
