"""fabula generate PROMPT  — streams the continuation to the terminal as it is written."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from fabula_sdk.commands.common import fail, handle_errors, state
from fabula_sdk.text import ContextReport, GenerationStats, TextClient, TextPiece


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    if str(path) == "-":
        return typer.get_text_stream("stdin").read()
    return path.read_text(encoding="utf-8")


@handle_errors
def generate(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Argument(help="the text to continue (or use --story)")] = None,
    story: Annotated[Path | None, typer.Option("--story", help="a story file (- for stdin) to continue; it is "
                                               "trimmed to the context window with --memory/--note")] = None,
    memory: Annotated[str, typer.Option("--memory", help="text always kept before the story")] = "",
    note: Annotated[str, typer.Option("--note", help="author's note, inserted near the end of the story")] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, help="tokens to write")] = 80,
    min_new_tokens: Annotated[int, typer.Option("--min-new-tokens", min=0)] = 0,
    preset: Annotated[str, typer.Option("--preset", "-p", help="sampling preset (see the server's /ai/presets)")] = "",
    model: Annotated[str, typer.Option("--model", "-m", help="model name; the server's default if omitted")] = "",
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="same seed + same input = same text")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", "-t")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=0)] = None,
    top_p: Annotated[float | None, typer.Option("--top-p")] = None,
    min_p: Annotated[float | None, typer.Option("--min-p")] = None,
    repetition_penalty: Annotated[float | None, typer.Option("--repetition-penalty")] = None,
    mirostat: Annotated[int | None, typer.Option("--mirostat", min=0, max=2, help="mirostat version; 0 off")] = None,
    mirostat_tau: Annotated[float | None, typer.Option("--mirostat-tau", help="target surprise in bits")] = None,
    mirostat_eta: Annotated[float | None, typer.Option("--mirostat-eta", help="mirostat's learning rate")] = None,
    cfg_scale: Annotated[float | None, typer.Option("--cfg-scale", help="classifier-free guidance; 1 off")] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="the negative context for --cfg-scale")] = None,
    phrase_rep_pen: Annotated[str | None, typer.Option(
        "--phrase-rep-pen", help="off, very_light, light, medium, aggressive or very_aggressive")] = None,
    dry_multiplier: Annotated[float | None, typer.Option("--dry-multiplier", help="DRY strength; 0 off")] = None,
    dry_base: Annotated[float | None, typer.Option("--dry-base")] = None,
    dry_allowed_length: Annotated[int | None, typer.Option("--dry-allowed-length", min=1)] = None,
    xtc_probability: Annotated[float | None, typer.Option("--xtc-probability", help="XTC; 0 off")] = None,
    xtc_threshold: Annotated[float | None, typer.Option("--xtc-threshold")] = None,
    unified_linear: Annotated[float | None, typer.Option("--unified-linear")] = None,
    unified_quad: Annotated[float | None, typer.Option("--unified-quad")] = None,
    unified_conf: Annotated[float | None, typer.Option("--unified-conf")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="stop before this text (repeatable)")] = None,
    ban: Annotated[list[str] | None, typer.Option("--ban", help="never write this text (repeatable)")] = None,
    show_context: Annotated[bool, typer.Option("--show-context", help="print the context report to stderr")] = False,
    probs: Annotated[int, typer.Option("--probs", min=0, max=20, help="after the text, print each token's "
                                       "probability and its N most likely alternatives, before and after "
                                       "the samplers, to stderr")] = 0,
) -> None:
    """Continue PROMPT (or a --story file), printing the text as the model writes it."""
    story_text = _read(story)
    if (prompt is None) == (story_text is None):
        raise fail("give either PROMPT or --story")
    saved = state(ctx).sessions.load()
    if saved is None:
        raise fail("not logged in: run `fabula login` (or `fabula register`) first")
    sampling = {name: value for name, value in (
        ("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("min_p", min_p),
        ("repetition_penalty", repetition_penalty), ("mirostat", mirostat), ("mirostat_tau", mirostat_tau),
        ("mirostat_eta", mirostat_eta), ("cfg_scale", cfg_scale), ("cfg_uc", negative),
        ("phrase_repetition_penalty", phrase_rep_pen), ("dry_multiplier", dry_multiplier), ("dry_base", dry_base),
        ("dry_allowed_length", dry_allowed_length), ("xtc_probability", xtc_probability),
        ("xtc_threshold", xtc_threshold), ("unified_linear", unified_linear), ("unified_quad", unified_quad),
        ("unified_conf", unified_conf)) if value is not None}
    options: dict = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens, "preset": preset,
                     "model": model, "stop_sequences": stop or [], "banned_strings": ban or []}
    if sampling:
        options["sampling"] = sampling
    if seed is not None:
        options["seed"] = seed
    if probs:
        options["top_probabilities"] = probs
    if story_text is not None:
        options["context"] = {"story": story_text, "memory": memory, "authors_note": note}
    else:
        options["prompt"] = prompt
    token_probabilities: list[dict] = []
    with TextClient(state(ctx).url or saved.url, saved.token) as ai:
        for event in ai.stream(**options):
            if isinstance(event, TextPiece):
                typer.echo(event.text, nl=False)
                token_probabilities.extend(event.probabilities)
            elif isinstance(event, ContextReport) and show_context:
                for entry in event.entries:
                    mark = "+" if entry["included"] else "-"
                    typer.echo(f"{mark} {entry['source']}: {entry['reason']} ({entry['tokens']} tokens)", err=True)
            elif isinstance(event, GenerationStats):
                typer.echo("")
                for line in probability_lines(token_probabilities):
                    typer.echo(line, err=True)
                typer.echo(f"[{event.finish_reason}; {event.completion_tokens} tokens, "
                           f"{event.tokens_per_second:.1f} tokens/s, seed {event.seed}]", err=True)


def _percent(logprob: float | None) -> str:
    return "0%" if logprob is None else f"{100 * math.exp(logprob):.1f}%"


def probability_lines(token_probabilities: list[dict]) -> list[str]:
    """One line per generated token: the token, its probability before → after the samplers, then
    the alternatives of each distribution."""
    lines = []
    for entry in token_probabilities:
        chosen = next((a["text"] for a in entry["before"] + entry["after"] if a["token_id"] == entry["token_id"]),
                      f"#{entry['token_id']}")

        def alternatives(side: str) -> str:
            return ", ".join(f"{a['text']!r} {_percent(a['logprob'])}" for a in entry[side])

        lines.append(f"{chosen!r} {_percent(entry['logprob_before'])} -> {_percent(entry['logprob_after'])}"
                     f"  | before: {alternatives('before')}  | after: {alternatives('after')}")
    return lines


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
