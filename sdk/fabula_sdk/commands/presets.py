"""fabula presets list | show ID | new NAME | delete ID — your own sampler settings, named."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from fabula_sdk.commands.common import fail, handle_errors, state
from fabula_sdk.documents.preset import Preset, SamplerName, SamplerStep, Sampling, complete_sampler_order
from fabula_sdk.documents.store import DocumentStore

app = typer.Typer(help="Your sampler presets (stories name one with `stories new --preset`).", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_presets(ctx: typer.Context) -> None:
    """One line per preset: id, name, model."""
    with state(ctx).signed_in() as client:
        presets = DocumentStore(client).list_presets()
    if not presets:
        typer.echo("no presets yet")
    for stored in presets:
        typer.echo(f"{stored.id}\t{stored.document.name}\t{stored.document.text_model or 'any model'}")


@app.command("show")
@handle_errors
def show(ctx: typer.Context, id: Annotated[str, typer.Argument(help="the preset's id")]) -> None:
    """The preset as JSON (the stored document)."""
    with state(ctx).signed_in() as client:
        preset = DocumentStore(client).open_preset(id).document
    typer.echo(json.dumps(preset.to_json(), indent=2, ensure_ascii=False, sort_keys=True))


def _order(order: str) -> list[SamplerStep]:
    """The samplers named, in that order, then the others switched off."""
    steps: list[SamplerStep] = []
    for name in (part.strip() for part in order.split(",") if part.strip()):
        if name not in SamplerName._value2member_map_:
            raise fail(f"--order: unknown sampler {name!r} (one of {', '.join(SamplerName)})")
        if any(step.sampler == name for step in steps):
            raise fail(f"--order: {name} is named twice")
        steps.append(SamplerStep(SamplerName(name)))
    return complete_sampler_order(steps) if steps else []


@app.command("new")
@handle_errors
def new(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the preset's name")],
    description: Annotated[str, typer.Option("--description")] = "",
    model: Annotated[str, typer.Option("--model", "-m", help="the text model it is made for")] = "",
    temperature: Annotated[float | None, typer.Option("--temperature", "-t")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=0)] = None,
    top_p: Annotated[float | None, typer.Option("--top-p")] = None,
    top_a: Annotated[float | None, typer.Option("--top-a")] = None,
    typical_p: Annotated[float | None, typer.Option("--typical-p")] = None,
    tail_free: Annotated[float | None, typer.Option("--tail-free")] = None,
    min_p: Annotated[float | None, typer.Option("--min-p")] = None,
    repetition_penalty: Annotated[float | None, typer.Option("--repetition-penalty")] = None,
    repetition_penalty_range: Annotated[int | None, typer.Option("--repetition-penalty-range", min=0)] = None,
    order: Annotated[str, typer.Option("--order", help="samplers to use, in order, e.g. temperature,top_k,top_p "
                                       "(the others are switched off)")] = "",
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", "-n", min=1)] = None,
) -> None:
    """Store a preset; prints its id."""
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, top_a=top_a, typical_p=typical_p,
                        tail_free=tail_free, min_p=min_p, repetition_penalty=repetition_penalty,
                        repetition_penalty_range=repetition_penalty_range)
    preset = Preset(name=name, description=description, text_model=model, sampling=sampling,
                    sampler_order=_order(order), max_new_tokens=max_new_tokens)
    with state(ctx).signed_in() as client:
        stored = DocumentStore(client).create_preset(preset)
    typer.echo(stored.id)


@app.command("delete")
@handle_errors
def delete(ctx: typer.Context, id: Annotated[str, typer.Argument(help="the preset's id")]) -> None:
    """Delete a preset (stories naming it fall back to their own settings)."""
    with state(ctx).signed_in() as client:
        DocumentStore(client).delete_preset(id)
    typer.echo(f"deleted {id}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="presets")
