"""fabula lorebooks list | show ID | import FILE | export ID -o FILE | attach ID STORY | delete ID"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fabula_sdk.commands.common import handle_errors, state
from fabula_sdk.documents.store import DocumentStore
from fabula_sdk.importers import LOREBOOK_FORMATS, read_lorebook

app = typer.Typer(help="Lorebooks: entries the story's context takes in when their keys appear.",
                  no_args_is_help=True)

LorebookId = Annotated[str, typer.Argument(help="the lorebook's id (see `fabula lorebooks list`)")]


@app.command("list")
@handle_errors
def list_lorebooks(ctx: typer.Context) -> None:
    """One line per lorebook: id, entries, categories, name."""
    with state(ctx).signed_in() as client:
        lorebooks = DocumentStore(client).list_lorebooks()
    if not lorebooks:
        typer.echo("no lorebooks yet")
    for stored in lorebooks:
        book = stored.document
        typer.echo(f"{stored.id}\t{len(book.entries)} entries\t{len(book.categories)} categories\t{book.name}")


@app.command("show")
@handle_errors
def show(ctx: typer.Context, id: LorebookId,
         as_json: Annotated[bool, typer.Option("--json", help="the whole document as JSON")] = False) -> None:
    """The lorebook's entries (name, keys, flags) or, with --json, the stored document."""
    with state(ctx).signed_in() as client:
        book = DocumentStore(client).open_lorebook(id).document
    if as_json:
        typer.echo(json.dumps(book.to_json(), indent=2, ensure_ascii=False, sort_keys=True))
        return
    typer.echo(f"{book.name} ({len(book.entries)} entries)")
    names = {category.id: category.name for category in book.categories}
    for category in book.categories:
        flags = [flag for flag, on in (("disabled", not category.enabled), ("sub-context", category.create_subcontext))
                 if on]
        typer.echo(f"category {category.name or category.id}{' [' + ', '.join(flags) + ']' if flags else ''}")
    for entry in book.entries:
        flags = [flag for flag, on in (("always on", entry.always_on), ("disabled", entry.disabled),
                                       ("regex", entry.regex_keys), ("cascading", entry.cascading_activation),
                                       ("case-sensitive", entry.case_sensitive)) if on]
        category = f" in {names.get(entry.category, entry.category)}" if entry.category else ""
        typer.echo(f"- {entry.name or entry.id}{category}: keys {', '.join(entry.keys) or '-'}"
                   f"{' [' + ', '.join(flags) + ']' if flags else ''}")


@app.command("import")
@handle_errors
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="NovelAI .lorebook, SillyTavern / KoboldAI World Info or Fabula JSON",
                                         exists=True, dir_okay=False)],
    format: Annotated[str | None, typer.Option("--format", help=f"one of {', '.join(LOREBOOK_FORMATS)}; "
                                               "default: recognised from the file")] = None,
    name: Annotated[str, typer.Option("--name", help="the lorebook's name; default: the file's")] = "",
    story: Annotated[str | None, typer.Option("--story", help="also use it in this story")] = None,
) -> None:
    """Read the whole file, check it, then store it as a lorebook; prints its id."""
    lorebook = read_lorebook(file.read_bytes(), file.name, format=format, name=name)
    with state(ctx).signed_in() as client:
        store = DocumentStore(client)
        doc = store.open(story) if story else None  # refuse a wrong story id before storing anything
        stored = store.create_lorebook(lorebook)
        if doc is not None:
            doc.story.lorebook_ids.append(stored.id)
            store.save(doc)
    typer.echo(stored.id)
    typer.echo(f"imported {len(lorebook.entries)} entries and {len(lorebook.categories)} categories", err=True)


@app.command("export")
@handle_errors
def export(ctx: typer.Context, id: LorebookId,
           output: Annotated[Path, typer.Option("--output", "-o", help="the JSON file to write")]) -> None:
    """Write the lorebook as Fabula lorebook JSON (docs/formats.md; `import` reads it back)."""
    with state(ctx).signed_in() as client:
        book = DocumentStore(client).open_lorebook(id).document
    output.write_text(json.dumps(book.to_json(), indent=2, ensure_ascii=False, sort_keys=True) + "\n", "utf-8")
    typer.echo(f"wrote {book.name or id} to {output}", err=True)


@app.command("attach")
@handle_errors
def attach(ctx: typer.Context, id: LorebookId, story: Annotated[str, typer.Argument(help="the story's id")]) -> None:
    """Use the lorebook in a story (a lorebook can serve any number of stories)."""
    with state(ctx).signed_in() as client:
        store = DocumentStore(client)
        store.open_lorebook(id)
        doc = store.open(story)
        if id not in doc.story.lorebook_ids:
            doc.story.lorebook_ids.append(id)
            store.save(doc)
    typer.echo(f"story {story} uses lorebook {id}")


@app.command("delete")
@handle_errors
def delete(ctx: typer.Context, id: LorebookId) -> None:
    """Delete a lorebook no story uses."""
    with state(ctx).signed_in() as client:
        DocumentStore(client).delete_lorebook(id)
    typer.echo(f"deleted {id}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="lorebooks")
