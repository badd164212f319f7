"""fabula stories list | new | show | continue | retry | undo | redo | branches | checkout |
illustrate | import | export | push | pull | delete

A story is opened (fetched and decrypted) for each command and saved back when the command
changed it; a save that meets another device's newer save keeps both (docs/formats.md, "Saving
and conflicts"), so a command never loses text."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fabula_sdk.client import FabulaClient
from fabula_sdk.commands.common import fail, handle_errors, state
from fabula_sdk.documents.content import IllustrationBlock, Origin, TextBlock
from fabula_sdk.documents.store import DocumentStore, StoryDocument
from fabula_sdk.documents.story import Story
from fabula_sdk.exporters import EXPORT_FORMATS, export_story
from fabula_sdk.importers import STORY_FORMATS, read_story, store_story
from fabula_sdk.stories import Stories
from fabula_sdk.text import ContextReport
from fabula_sdk.writing import StoryWriter

app = typer.Typer(help="Your stories, end-to-end encrypted.", no_args_is_help=True)

StoryId = Annotated[str, typer.Argument(help="the story's id (see `fabula stories list`)")]
# How much of a branch's text `branches` shows.
BRANCH_TAIL_CHARS = 60


def _read_text(file: Path) -> str:
    if str(file) == "-":
        return typer.get_text_stream("stdin").read()
    try:
        return file.read_text("utf-8")
    except UnicodeDecodeError:
        raise fail(f"{file} is not UTF-8 text") from None


def _writer(client: FabulaClient, store: DocumentStore) -> StoryWriter:
    transport = client.transport
    return StoryWriter(store, transport.url, transport.token)  # type: ignore[attr-defined]


def _report(report: ContextReport) -> None:
    for entry in report.entries:
        mark = "+" if entry["included"] else "-"
        typer.echo(f"{mark} {entry['source']}: {entry['reason']} ({entry['tokens']} tokens)", err=True)


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


@app.command("new")
@handle_errors
def new(
    ctx: typer.Context,
    title: Annotated[str, typer.Option("--title", "-t", help="the title")] = "",
    text: Annotated[str | None, typer.Option("--text", help="the opening text (prompt)")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f",
                                              help="the opening text from a UTF-8 file; - = stdin")] = None,
    memory: Annotated[str, typer.Option("--memory", help="memory: always kept at the top of the context")] = "",
    note: Annotated[str, typer.Option("--note", help="author's note: inserted near the end of the context")] = "",
    lorebook: Annotated[list[str] | None, typer.Option("--lorebook", "-l", help="a lorebook id (repeatable)")] = None,
    preset: Annotated[str, typer.Option("--preset", "-p", help="one of your presets' ids")] = "",
    model: Annotated[str, typer.Option("--model", "-m", help="text model; the server's default if omitted")] = "",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="a tag (repeatable)")] = None,
) -> None:
    """Create a story (the opening text is prompt text); prints its id."""
    if text is not None and file is not None:
        raise fail("give --text or --file, not both")
    opening = _read_text(file) if file is not None else (text or "")
    with state(ctx).signed_in() as client:
        store = DocumentStore(client)
        for id in lorebook or []:
            store.open_lorebook(id)  # refuse an id that is not a lorebook of this account
        if preset:
            store.open_preset(preset)
        story = Story(content_id="", title=title, tags=list(tag or []), lorebook_ids=list(lorebook or []))
        story.memory.text, story.authors_note.text = memory, note
        story.settings.preset_id, story.settings.text_model = preset, model
        doc = store.create_story(text=opening, origin=Origin.PROMPT, story=story)
    typer.echo(doc.id)


def _marked(doc: StoryDocument) -> str:
    """The text with AI-written runs in [[...]] and illustrations as [image: caption]."""
    out = []
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            out.append(f"[[{block.text}]]" if block.origin in (Origin.AI, Origin.EDIT) else block.text)
        elif isinstance(block, IllustrationBlock):
            out.append(f"\n[image {block.image_id}: {block.caption}]\n")
    return "".join(out)


@app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    id: StoryId,
    details: Annotated[bool, typer.Option("--details", "-d", help="title, memory, note, lorebooks, settings "
                                          "first")] = False,
    marks: Annotated[bool, typer.Option("--marks", help="AI text in [[...]], illustrations as [image ...]")] = False,
) -> None:
    """Print the story's text at its current node."""
    with state(ctx).signed_in() as client:
        doc = DocumentStore(client).open(id)
    if details:
        story = doc.story
        typer.echo(f"title: {story.title}")
        typer.echo(f"tags: {', '.join(story.tags)}")
        typer.echo(f"memory: {story.memory.text}")
        typer.echo(f"author's note: {story.authors_note.text}")
        typer.echo(f"lorebooks: {', '.join(story.lorebook_ids) or '-'}")
        typer.echo(f"preset: {story.settings.preset_id or '-'}; model: {story.settings.text_model or 'default'}")
        typer.echo(f"history: {len(doc.history)} nodes, head {doc.history.head}")
        typer.echo("---")
    text = _marked(doc) if marks else doc.text
    typer.echo(text, nl=not text.endswith("\n"))


def _continue(ctx: typer.Context, id: str, retry: bool, max_new_tokens: int | None, seed: int | None,
              show_context: bool) -> None:
    with state(ctx).signed_in() as client:
        store = DocumentStore(client)
        doc = store.open(id)
        writer = _writer(client, store)
        for piece in writer.continue_story(doc, retry=retry, max_new_tokens=max_new_tokens, seed=seed,
                                           on_report=_report if show_context else None):
            typer.echo(piece, nl=False)
            sys.stdout.flush()
        typer.echo("")
        assert writer.last is not None
        if writer.last.node is None:
            typer.echo("[the model wrote nothing; nothing was saved]", err=True)
        else:
            typer.echo(f"[saved as node {writer.last.node}]", err=True)


MaxNewTokens = Annotated[int | None, typer.Option("--max-new-tokens", "-n", min=1,
                                                  help="tokens to write; default: the story's/preset's")]
Seed = Annotated[int | None, typer.Option("--seed", min=0, help="same seed + same story = same text")]
ShowContext = Annotated[bool, typer.Option("--show-context", help="print the context report to stderr")]


@app.command("continue")
@handle_errors
def continue_(ctx: typer.Context, id: StoryId, max_new_tokens: MaxNewTokens = None, seed: Seed = None,
              show_context: ShowContext = False) -> None:
    """Continue the story with its memory, author's note, lorebooks and settings; the text is
    streamed and saved as a new history node."""
    _continue(ctx, id, False, max_new_tokens, seed, show_context)


@app.command("retry")
@handle_errors
def retry(ctx: typer.Context, id: StoryId, max_new_tokens: MaxNewTokens = None, seed: Seed = None,
          show_context: ShowContext = False) -> None:
    """Write another continuation in place of the last one (a sibling branch; the old one stays)."""
    _continue(ctx, id, True, max_new_tokens, seed, show_context)


def _move(ctx: typer.Context, id: str, how: str, node: int | None = None) -> None:
    with state(ctx).signed_in() as client:
        store = DocumentStore(client)
        doc = store.open(id)
        history = doc.history
        if how == "undo":
            history.undo()
        elif how == "redo":
            history.redo()
        else:
            assert node is not None
            try:
                history.checkout(node)
            except KeyError as error:
                raise fail(str(error.args[0])) from None
        store.save(doc)
    typer.echo(f"head: node {history.head} ({history.node(history.head).kind})")


@app.command("undo")
@handle_errors
def undo(ctx: typer.Context, id: StoryId) -> None:
    """Step back to the previous node (nothing is deleted; `redo` comes back)."""
    _move(ctx, id, "undo")


@app.command("redo")
@handle_errors
def redo(ctx: typer.Context, id: StoryId) -> None:
    """Step forward again (to the newest branch below the current node)."""
    _move(ctx, id, "redo")


@app.command("checkout")
@handle_errors
def checkout(ctx: typer.Context, id: StoryId,
             node: Annotated[int, typer.Argument(min=0, help="a node id (see `fabula stories branches`)")]) -> None:
    """Restore any node (a branch's tip, or a point on it) as the current text."""
    _move(ctx, id, "checkout", node)


@app.command("branches")
@handle_errors
def branches(ctx: typer.Context, id: StoryId) -> None:
    """One line per branch tip: node id, kind, * for the current branch, the end of its text."""
    with state(ctx).signed_in() as client:
        doc = DocumentStore(client).open(id)
    history = doc.history
    on_path = set(history.path(history.head))
    for leaf in history.leaves():
        mark = "*" if leaf in on_path or leaf == history.head else " "
        tail = history.text_at(leaf)[-BRANCH_TAIL_CHARS:].replace("\n", " ")
        typer.echo(f"{mark} {leaf}\t{history.node(leaf).kind}\t…{tail}")
    if history.head not in history.leaves():
        typer.echo(f"* head is node {history.head} (inside a branch; `redo` walks on)")


@app.command("illustrate")
@handle_errors
def illustrate(
    ctx: typer.Context,
    id: StoryId,
    prompt: Annotated[str, typer.Option("--prompt", help="what to draw")],
    caption: Annotated[str, typer.Option("--caption", help="the caption; default: the prompt")] = "",
    seed: Annotated[int | None, typer.Option("--seed", min=0)] = None,
    width: Annotated[int | None, typer.Option("--width", "-W", min=64, help="default: the story's image width")] = None,
    height: Annotated[int | None, typer.Option("--height", "-H", min=64)] = None,
    steps: Annotated[int | None, typer.Option("--steps", "-s", min=1)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="image model")] = None,
) -> None:
    """Generate a picture with the story's image settings, store it (with a thumbnail) and insert
    it as an illustration at the end of the text."""
    overrides = {key: value for key, value in (("seed", seed), ("width", width), ("height", height),
                                               ("steps", steps), ("model", model)) if value is not None}
    with state(ctx).signed_in() as client:
        store = DocumentStore(client)
        doc = store.open(id)
        block = _writer(client, store).illustrate(doc, prompt, caption=caption, **overrides)
    typer.echo(block.image_id)


@app.command("import")
@handle_errors
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="a NovelAI .scenario, Markdown (.md) or plain-text file",
                                         exists=True, dir_okay=False)],
    format: Annotated[str | None, typer.Option("--format", help=f"one of {', '.join(STORY_FORMATS)}; default: "
                                               "from the file's name")] = None,
    title: Annotated[str, typer.Option("--title", "-t", help="the title; default: the file's")] = "",
) -> None:
    """Read and check the whole file, then store it as a story (a scenario's lorebook and
    settings preset too); prints the story's id."""
    imported = read_story(file.read_bytes(), file.name, format=format, title=title)
    with state(ctx).signed_in() as client:
        doc = store_story(DocumentStore(client), imported)
    typer.echo(doc.id)


@app.command("export")
@handle_errors
def export(
    ctx: typer.Context,
    id: StoryId,
    output: Annotated[Path, typer.Option("--output", "-o", help="the file to write (.html or .epub)")],
    format: Annotated[str | None, typer.Option("--format", help=f"one of {', '.join(EXPORT_FORMATS)}; default: "
                                               "from the output's name")] = None,
    author: Annotated[str, typer.Option("--author", help="the EPUB's author")] = "",
) -> None:
    """Write the story for readers outside Fabula: one HTML file (pictures embedded) or an EPUB."""
    format = format or output.suffix.lower().lstrip(".")
    if format not in EXPORT_FORMATS:
        raise fail(f"--format must be one of {', '.join(EXPORT_FORMATS)} (or name the output .html / .epub)")
    with state(ctx).signed_in() as client:
        data = export_story(DocumentStore(client), id, format, author=author)
    output.write_bytes(data)
    typer.echo(f"wrote {output}", err=True)


@app.command("push")
@handle_errors
def push(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="UTF-8 text file with the story's text; - reads stdin")],
    title: Annotated[str | None, typer.Option("--title", "-t", help="the title (kept as is when omitted)")] = None,
    id: Annotated[str | None, typer.Option("--id", help="update this story (or create it with this id)")] = None,
) -> None:
    """Create a story from FILE, or replace the text of story --id (one edit node)."""
    text = _read_text(file)
    with state(ctx).signed_in() as client:
        story = Stories(client).push(text, title=title, id=id, default_title="" if str(file) == "-" else file.stem)
    typer.echo(story.id)


@app.command("pull")
@handle_errors
def pull(
    ctx: typer.Context,
    id: StoryId,
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
def delete(ctx: typer.Context, id: StoryId) -> None:
    """Delete a story, its content, history and images (and lorebooks no other story uses)."""
    with state(ctx).signed_in() as client:
        Stories(client).delete(id)
    typer.echo(f"deleted {id}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="stories")
