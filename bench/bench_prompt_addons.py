"""Prompt syntax and LoRAs: s/image of a long weighted prompt with two LoRAs against a plain one.

    python -m bench.bench_prompt_addons             # tiny model, then full-size SD 1.5 (random)
    python -m bench.bench_prompt_addons --arch tiny --no-record

Both requests go through the product's DiffusersGenerator (CPU unless the machine has CUDA)
with the same size, steps, sampler (Euler), CFG 7 and seed: a plain short prompt without
LoRAs, and a ~150-token prompt in A1111 syntax (weights, `[de-emphasis]`, more than one
75-token chunk) with `<lora:a:0.7> <lora:b:0.5>`, two random LoRAs made for the model's own
UNet and text encoder (`inference.testing_addons.save_random_lora`). Calls alternate, best of
N each; the generator switches LoRAs between them as the queue would between batches.

Also measured apart, best of N each: `encode_prompts` alone for each prompt; `AddOns.apply`
switching set A (a 0.7, b 0.5) -> set B (b 1.0) -> none -> A; and each LoRA's first load.
Ratios are what this measures; absolute times only mean something on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench.common import (
    append_row,
    commit,
    device,
    full_size_sd15_single_file,
    print_table,
    tiny_single_file_spec,
    today,
)
from inference.device import RuntimeOptions
from inference.generator import DiffusersGenerator
from inference.prompt_encoding import chunk_prompt, encode_prompts
from inference.testing_addons import save_random_lora
from inference.types import GenerationRequest, LoraSpec, ModelSpec

SECTION = "## Prompt syntax and LoRAs"
PLAIN_PROMPT = "a lighthouse at dusk"
LORA_TAGS = "<lora:a:0.7> <lora:b:0.5>"
WEIGHTED_PROMPT = (
    "(masterpiece:1.2), (best quality:1.1), [blurry], an old stone lighthouse on a rocky cliff "
    "above a stormy sea at dusk, (dramatic clouds:1.3), waves crashing against the rocks, "
    "spray in the air, ((warm light)) from the lantern room, a narrow path winding up the "
    "cliff, wild grass bending in the wind, [[lens flare]], seagulls circling the tower, a small "
    "fishing boat with a red sail far out on the water, (volumetric fog:0.8), (rim "
    "lighting:1.15), highly detailed, intricate stonework, weathered white paint, rusty iron "
    "railing, reflections on wet rocks, cinematic composition, wide angle, (golden hour:1.1), "
    "soft shadows, depth of field, sharp focus, 8k, (photorealistic:1.25), film grain, muted "
    f"colors, (moody atmosphere:1.2), by a famous landscape photographer {LORA_TAGS}"
)
NEGATIVE = "blurry"
SET_A = (("a", 0.7), ("b", 0.5))  # the weighted prompt's LoRAs
SET_B = (("b", 1.0),)
SWITCHES = (("A -> B", SET_A, SET_B), ("B -> none", SET_B, ()), ("none -> A", (), SET_A))


@dataclasses.dataclass
class Measured:
    generate: dict[str, list[float]]  # s per image: plain, weighted, weighted only, LoRAs only
    encode_plain: list[float]  # s per encode_prompts call
    encode_weighted: list[float]
    switch: dict[str, list[float]]  # s per AddOns.apply
    first_load: dict[str, float]  # s: the first apply that loads each LoRA
    tokens: int
    chunks: int


def measure(
    spec: ModelSpec, size: int, steps: int, repeats: int, inner_repeats: int, folder: Path
) -> Measured:
    import torch

    started_at = time.perf_counter()

    def progress(what: str) -> None:
        print(f"  [{time.perf_counter() - started_at:6.1f} s] {what}", file=sys.stderr, flush=True)

    paths = {name: folder / f"lora-{name}.safetensors" for name in ("a", "b")}
    generator = DiffusersGenerator(
        {"m": spec},
        RuntimeOptions(),  # no previews asked
        loras={name: LoraSpec(name, str(path)) for name, path in paths.items()},
    )
    loaded = generator.load("m")
    pipe, addons, family = loaded.pipe, loaded.addons, loaded.info.family
    for seed, path in enumerate(paths.values(), start=1):  # shaped like this model
        save_random_lora(pipe, path, rank=8, seed=seed)

    import peft  # noqa: F401  (its import is no LoRA's cost)

    progress("model loaded, LoRAs written")
    first_load = {}
    for name, weight in SET_A:  # each LoRA's first use: read, inject its layers, activate
        started = time.perf_counter()
        addons.apply([(name, weight)])
        first_load[name] = time.perf_counter() - started
        addons.apply([])
    assert addons.loaded == ("a", "b")

    plain = GenerationRequest(PLAIN_PROMPT, NEGATIVE, size, size, steps, 7.0, 1234, "Euler", 1, "m")
    requests = {
        "plain": plain,
        "weighted": dataclasses.replace(plain, prompt=WEIGHTED_PROMPT),
        # The two halves of the difference apart: the long prompt alone, the LoRAs alone.
        "weighted only": dataclasses.replace(
            plain, prompt=WEIGHTED_PROMPT.removesuffix(f" {LORA_TAGS}")
        ),
        "LoRAs only": dataclasses.replace(plain, prompt=f"{PLAIN_PROMPT} {LORA_TAGS}"),
    }
    assert requests["weighted"].loras == requests["LoRAs only"].loras == SET_A
    assert not requests["weighted only"].loras
    for request in requests.values():  # warm-up: first-call costs
        [result] = generator.generate([request])
        assert result is not None and result.images[0].width == size
    progress("LoRAs loaded, generate warmed up")
    seconds: dict[str, list[float]] = {kind: [] for kind in requests}
    for _ in range(repeats):
        for kind, request in requests.items():
            started = time.perf_counter()
            generator.generate([request])
            seconds[kind].append(time.perf_counter() - started)

    progress("generate timed")
    encode: dict[str, list[float]] = {"plain": [], "weighted": []}
    for _ in range(inner_repeats):
        for kind, prompt, loras in (
            ("plain", PLAIN_PROMPT, ()),
            ("weighted", WEIGHTED_PROMPT, SET_A),
        ):
            addons.apply(loras)  # as in generate: the text encoder's LoRA layers count
            text, negative = addons.prepare_prompt(prompt), addons.prepare_prompt(NEGATIVE)
            with torch.inference_mode():
                started = time.perf_counter()
                encode_prompts(pipe, family, [text], [negative])
                encode[kind].append(time.perf_counter() - started)

    progress("encode_prompts timed")
    switch: dict[str, list[float]] = {label: [] for label, _, _ in SWITCHES}
    addons.apply(SET_A)
    for _ in range(inner_repeats):
        for label, before, after in SWITCHES:
            assert addons.active == addons.resolve(before)
            started = time.perf_counter()
            addons.apply(after)
            switch[label].append(time.perf_counter() - started)
    addons.apply([])
    progress("switches timed")

    chunks = chunk_prompt(pipe.tokenizer, WEIGHTED_PROMPT)
    special = {
        pipe.tokenizer.bos_token_id,
        pipe.tokenizer.eos_token_id,
        pipe.tokenizer.pad_token_id,
    }
    tokens = sum(1 for chunk in chunks for token in chunk.ids if token not in special)
    return Measured(
        seconds,
        encode["plain"],
        encode["weighted"],
        switch,
        first_load,
        tokens,
        len(chunks),
    )


def ms(seconds: list[float]) -> str:
    return f"{min(seconds) * 1000:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("both", "tiny", "sd15"), default="both")
    parser.add_argument("--size", type=int, default=256, help="output side for sd15")
    parser.add_argument("--steps", type=int, default=4, help="steps for sd15 (tiny: 20)")
    parser.add_argument("--repeats", type=int, default=3, help="generate calls of each (sd15)")
    parser.add_argument("--inner-repeats", type=int, default=10, help="encodes and switches")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)

    runs: list[tuple[str, int, int, Measured]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.arch in ("both", "tiny"):
            spec = tiny_single_file_spec(folder, "m")
            repeats = max(10, args.repeats)
            runs.append(
                ("tiny", 64, 20, measure(spec, 64, 20, repeats, args.inner_repeats, folder))
            )
        if args.arch in ("both", "sd15"):
            spec = ModelSpec("m", str(full_size_sd15_single_file()))
            measured = measure(
                spec, args.size, args.steps, args.repeats, args.inner_repeats, folder
            )
            runs.append(("SD 1.5 full size, random weights", args.size, args.steps, measured))

    rows = []
    for model, size, steps, m in runs:
        best = {kind: min(seconds) for kind, seconds in m.generate.items()}
        plain, weighted = best["plain"], best["weighted"]
        rows.append(
            [
                model,
                f"{size}²",
                str(steps),
                f"{m.tokens} / {m.chunks}",
                f"{plain:.3f}",
                f"{weighted:.3f}",
                f"{weighted / plain:.3f}",
                f"{best['weighted only'] / plain:.3f} / {best['LoRAs only'] / plain:.3f}",
                f"{ms(m.encode_plain)} / {ms(m.encode_weighted)}",
                " / ".join(ms(m.switch[label]) for label, _, _ in SWITCHES),
                " / ".join(f"{m.first_load[name] * 1000:.0f}" for name, _ in SET_A),
            ]
        )
    columns = [
        "model",
        "size",
        "steps",
        "weighted prompt tokens / chunks",
        "plain s/image",
        "weighted + 2 LoRAs s/image",
        "weighted ÷ plain (goal ≤ 1.05)",
        "apart ÷ plain: weighted prompt only / 2 LoRAs only",
        "encode_prompts ms plain / weighted",
        "switch ms A→B / B→none / none→A",
        "first load ms a / b",
    ]
    print(
        f"Euler, CFG 7, count 1, {os.cpu_count()} CPUs; generate: best of N alternating;"
        f" encode and switch: best of {args.inner_repeats}"
    )
    print_table(columns, rows)
    if not args.no_record:
        for row in rows:
            append_row(
                SECTION,
                "`python -m bench.bench_prompt_addons`: the product's generator, the same size, "
                "steps, sampler (Euler), CFG 7 and seed for both: a plain short prompt without "
                "LoRAs against a ~150-token A1111-syntax prompt (weights, [de-emphasis], comma-"
                "backtracked 75-token chunks) with `<lora:a:0.7> <lora:b:0.5>`, random rank-8 "
                "LoRAs on the UNet's and text encoder's attention projections "
                "(`save_random_lora`); apart, the weighted prompt without LoRAs and the plain "
                "prompt with them. Calls alternate, best of N each; the calls without LoRAs run "
                "on the same pipeline, its LoRA layers disabled (as after any LoRA job). Also, "
                "best of N: `encode_prompts` alone (prompt and negative `blurry`); `AddOns.apply` "
                "between set A (a 0.7, b 0.5), set B (b 1.0) and none; each LoRA's first load "
                "(read, inject, activate). Goal: weighted ÷ plain ≤ 1.05.",
                ["date (UTC)", "device", "commit", *columns],
                [today(), device(), commit(), *row],
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
