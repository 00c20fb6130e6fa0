"""Command line: `imagine-bot run | generate | upscale | tiny-model`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bot.flags import EXAMPLE, FLAGS

if TYPE_CHECKING:
    from bot.settings import Settings

logger = logging.getLogger("bot")


# Interaction and webhook tokens are live credentials (anyone holding one can post as the bot
# for 15 minutes). discord.py's DEBUG lines carry them in request URLs
# (/interactions/{id}/{token}/callback, /webhooks/{app_id}/{token}/messages/...) and in
# gateway payloads ('token': '...'), so they are redacted by shape, not by value. Discord's
# interaction tokens are base64 of "interaction:…", which catches them anywhere else too.
_TOKEN_PATTERNS = (
    re.compile(r"()aW50ZXJhY3Rpb246[A-Za-z0-9_\-]+"),
    re.compile(r"(/interactions/\d+/)[^/?#\s'\"]+"),
    re.compile(r"(/webhooks/\d+/)[^/?#\s'\"]+"),
    re.compile(r"""(['"]token['"]\s*:\s*['"])[^'"]+"""),
)
REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    """Defence in depth: even if a secret reaches a log call, it never reaches the log."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 8]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _TOKEN_PATTERNS:
            text = pattern.sub(rf"\g<1>{REDACTED}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call: the formatter reports it
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        # A traceback can quote a URL too (aiohttp errors do).
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def configure_logging(level: str, secrets: list[str] | None = None) -> None:
    # Before transformers/diffusers are imported: their import-time notices (e.g. about
    # torchvision, which we deliberately do not install) and save bars are noise here.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets or []))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # aiosqlite's DEBUG lines repeat every SQL statement with its parameters: prompts, user
    # ids and stored interaction tokens.
    for noisy in ("discord.gateway", "discord.http", "httpx", "urllib3", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.INFO))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagine-bot", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        help="your config file (TOML): only the keys you change, over the packaged defaults "
        "(bot/default.toml); see config/example.toml. Goes before the command.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("run", help="start the Discord bot")

    generate = commands.add_parser("generate", help="make an image without Discord")
    generate.add_argument("prompt", help=f"the prompt; inline flags work too ({EXAMPLE})")
    for flag in FLAGS:  # the same options as /imagine's inline flags, from their one table
        generate.add_argument(
            *(f"--{name}" for name in flag.names), dest=flag.option, type=flag.value_type
        )
    generate.add_argument(
        "--image", type=Path, help="start from this picture (PNG, JPEG or WebP): image-to-image"
    )
    generate.add_argument(
        "--strength",
        type=float,
        help="with --image: how much of it to repaint, 0-1 (default: images.image_strength)",
    )
    generate.add_argument("--out", type=Path, default=Path("image.png"))
    generate.add_argument("--no-progress", action="store_true", help="no progress bar")

    upscale = commands.add_parser(
        "upscale",
        help="make a picture larger (resize, then a light image-to-image pass)",
        description="Prompt, seed, sampler, CFG, steps and model come from the picture's "
        "A1111 metadata when it has some; options given here win.",
    )
    upscale.add_argument("image", type=Path, help="the picture (PNG, JPEG or WebP)")
    upscale.add_argument("--scale", type=float, help="default: images.upscale_factor")
    upscale.add_argument(
        "--strength", type=float, help="repaint strength 0-1; default: images.upscale_strength"
    )
    upscale.add_argument("--prompt", help="required if the picture carries no prompt")
    upscale.add_argument("--negative", dest="negative_prompt")
    upscale.add_argument("--steps", type=int)
    upscale.add_argument("--cfg", "--guidance", dest="guidance", type=float)
    upscale.add_argument("--seed", type=int)
    upscale.add_argument("--sampler")
    upscale.add_argument("--model")
    upscale.add_argument("--out", type=Path, help="default: <image>-x<scale>.png")
    upscale.add_argument("--no-progress", action="store_true", help="no progress bar")

    tiny = commands.add_parser("tiny-model", help="build a tiny random-weight model to smoke-test")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--family", choices=("sd1", "sdxl"), default="sd1")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from bot.settings import SettingsError, load_settings

    try:
        if args.command == "tiny-model":
            return _tiny_model(args)
        settings = load_settings(args.config, require_token=args.command == "run")
    except SettingsError as error:
        print(f"imagine-bot: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, [settings.discord.token.get_secret_value()])
    if args.command in ("generate", "upscale"):
        return _generate(args, settings)
    return _run(settings)


def _run(settings: Settings) -> int:
    from bot.app import run_bot
    from bot.startup import explain_startup_error

    try:
        asyncio.run(run_bot(settings))
    except KeyboardInterrupt:
        pass
    except Exception as error:
        # What the operator can fix (a bad token, no network, a damaged database, a data
        # directory the bot cannot write, an unusable model) is one line, not a traceback.
        message = explain_startup_error(error, settings)
        if message is None:
            raise
        print(f"imagine-bot: {message}", file=sys.stderr)
        return 2
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    from inference.testing import save_tiny_model, tiny_model_spec_toml
    from inference.testing_addons import save_tiny_lora, tiny_lora_spec_toml

    tiny = save_tiny_model(args.directory, family=args.family)
    directory = args.directory.resolve()
    lora = save_tiny_lora(directory / f"tiny-lora-{args.family}.safetensors", args.family)
    # The TOML goes to stdout alone, so `imagine-bot tiny-model DIR > tiny.toml` is a config.
    print(
        f"Tiny {args.family} model and LoRA written to {args.directory}; their config:",
        file=sys.stderr,
    )
    print(tiny_model_spec_toml(tiny))
    print(tiny_lora_spec_toml(lora, args.family))
    return 0


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    from bot.cli_generate import generate_to_files
    from bot.cli_upscale import upscale_to_file
    from inference.errors import InferenceError

    try:
        if args.command == "upscale":
            paths = upscale_to_file(args, settings)
        else:
            paths = generate_to_files(args, settings)
    except InferenceError as error:
        print(f"imagine-bot: {error}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
