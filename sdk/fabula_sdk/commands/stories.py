"""fabula stories list | push FILE | pull ID | delete ID"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fabula_sdk.commands.common import fail, handle_errors, state
from fabula_sdk.stories import Stories

app = typer.Typer(help="Your stories, end-to-end encrypted.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_stories(ctx: typer.Context) -> None:
    """One line per story: id, last change, title."""
    with state(ctx).signed_in() as client:
        summaries = Stories(client).list()
    if not summaries:
        typer.echo("no stories yet")
    for summary in summaries:
        typer.echo(f"{summary.id}\t{summary.updated_at or '-'}\t{summary.title}")


@app.command("push")
@handle_errors
def push(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="UTF-8 text file with the story's text; - reads stdin")],
    title: Annotated[str | None, typer.Option("--title", "-t", help="the title (kept as is when omitted)")] = None,
    id: Annotated[str | None, typer.Option("--id", help="update this story (or create it with this id)")] = None,
) -> None:
    """Create a story from FILE, or replace the text of story --id."""
    if str(file) == "-":
        text = typer.get_text_stream("stdin").read()
    else:
        try:
            text = file.read_text("utf-8")
        except UnicodeDecodeError:
            raise fail(f"{file} is not UTF-8 text") from None
    with state(ctx).signed_in() as client:
        story = Stories(client).push(text, title=title, id=id, default_title="" if str(file) == "-" else file.stem)
    typer.echo(story.id)


@app.command("pull")
@handle_errors
def pull(
    ctx: typer.Context,
    id: Annotated[str, typer.Argument(help="the story's id (see `fabula stories list`)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the text here instead of stdout")] = None,
) -> None:
    """Download and decrypt a story's text."""
    with state(ctx).signed_in() as client:
        story = Stories(client).load(id)
    if output is None:
        typer.echo(story.text, nl=False)
    else:
        output.write_text(story.text, "utf-8")
        typer.echo(f"wrote {story.title or story.id} to {output}", err=True)


@app.command("delete")
@handle_errors
def delete(ctx: typer.Context, id: Annotated[str, typer.Argument(help="the story's id")]) -> None:
    """Delete a story and its content."""
    with state(ctx).signed_in() as client:
        Stories(client).delete(id)
    typer.echo(f"deleted {id}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="stories")
