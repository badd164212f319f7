"""fabula image PROMPT -o out.png  — generates an image with a progress bar and saves it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fabula_sdk.commands.common import fail, handle_errors, state
from fabula_sdk.image import GeneratedImage, ImageAccepted, ImageClient, ImageFinished, ImageProgress


def _output_path(output: Path, index: int, count: int) -> Path:
    # One image: exactly the path given; several: out.png -> out-1.png, out-2.png, ...
    if count == 1:
        return output
    return output.with_name(f"{output.stem}-{index + 1}{output.suffix or '.png'}")


@handle_errors
def image(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="what to draw: {tag} x1.05, [tag] /1.05, (tag:1.3)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file (several images: -1, -2, ...)")] = Path(
        "image.png"),
    negative: Annotated[str, typer.Option("--negative", "-u", help="undesired content")] = "",
    preset: Annotated[str, typer.Option("--preset", help="undesired-content preset (heavy, light, none)")] = "",
    no_quality_tags: Annotated[bool, typer.Option("--no-quality-tags", help="do not add the quality tags")] = False,
    width: Annotated[int, typer.Option("--width", "-W", min=0, help="multiple of 64; 0 = the model's")] = 0,
    height: Annotated[int, typer.Option("--height", "-H", min=0, help="multiple of 64; 0 = the model's")] = 0,
    steps: Annotated[int, typer.Option("--steps", "-s", min=0, help="0 = the model's default")] = 0,
    scale: Annotated[float | None, typer.Option("--scale", "-g", help="guidance scale")] = None,
    rescale: Annotated[float, typer.Option("--rescale", help="guidance rescale, 0 to 1")] = 0.0,
    sampler: Annotated[str, typer.Option("--sampler", help="euler, euler_ancestral, dpmpp_2m, ...")] = "",
    schedule: Annotated[str | None, typer.Option("--schedule", help="native, karras or exponential")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="same seed + same settings = same image")] = None,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="number of images")] = 1,
    model: Annotated[str, typer.Option("--model", "-m", help="model name; the server's default if omitted")] = "",
    init_image: Annotated[Path | None, typer.Option("--image", "-i", help="img2img / inpaint / outpaint input")] = None,
    mask: Annotated[Path | None, typer.Option("--mask", help="inpaint: white = redraw")] = None,
    strength: Annotated[float | None, typer.Option("--strength", help="how much is redrawn, (0, 1]")] = None,
    extend: Annotated[str | None, typer.Option("--extend", help="outpaint: LEFT,RIGHT,TOP,BOTTOM pixels")] = None,
    reference: Annotated[list[str] | None, typer.Option(
        "--reference", help="reference image PATH[:strength[:information]] (vibe transfer); repeatable")] = None,
    control: Annotated[list[str] | None, typer.Option(
        "--control", help="control KIND:PATH[:strength] (canny, lineart, scribble, pose with a keypoints .json, "
                          "depth, background_removal); repeatable")] = None,
    character: Annotated[list[str] | None, typer.Option(
        "--character", help='character "prompt@x,y,w,h" (fractions of the canvas) or "prompt@C3" (grid); '
                            "repeatable")] = None,
) -> None:
    """Generate an image from PROMPT and save it as a PNG (parameters embedded), with progress."""
    saved = state(ctx).sessions.load()
    if saved is None:
        raise fail("not logged in: run `fabula login` (or `fabula register`) first")
    options: dict = {"prompt": prompt, "negative_prompt": negative, "negative_preset": preset, "width": width,
                     "height": height, "steps": steps, "guidance_rescale": rescale, "sampler": sampler,
                     "n_images": count, "model": model}
    if no_quality_tags:
        options["quality_tags"] = False
    for key, value in (("guidance_scale", scale), ("noise_schedule", schedule), ("seed", seed),
                       ("strength", strength)):
        if value is not None:
            options[key] = value
    if mask is not None and init_image is None:
        raise fail("--mask needs --image")
    if extend is not None and init_image is None:
        raise fail("--extend needs --image")
    if init_image is not None:
        options["image"] = init_image.read_bytes()
        options["action"] = "img2img"
        if mask is not None:
            options["action"], options["mask"] = "inpaint", mask.read_bytes()
        elif extend is not None:
            try:
                left, right, top, bottom = (int(part) for part in extend.split(","))
            except ValueError:
                raise fail(f"--extend expects LEFT,RIGHT,TOP,BOTTOM in pixels, got {extend!r}") from None
            options.update(action="outpaint", left=left, right=right, top=top, bottom=bottom)
    if reference:
        options["references"] = [_reference(text) for text in reference]
    if control:
        options["controls"] = [_control(text) for text in control]
    if character:
        options["characters"] = [_character(text) for text in character]
    written: list[Path] = []
    with ImageClient(state(ctx).url or saved.url, saved.token) as ai:
        progress = None
        try:
            for event in ai.stream(**options):
                if isinstance(event, ImageAccepted):
                    if event.prompt.get("dropped_words"):
                        typer.echo(f"warning: prompt too long; dropped: {' '.join(event.prompt['dropped_words'])}",
                                   err=True)
                elif isinstance(event, ImageProgress):
                    if progress is None:
                        progress = typer.progressbar(length=event.total_steps, label="denoising", file=sys.stderr)
                        progress.__enter__()
                    progress.update(event.step - progress.pos)
                elif isinstance(event, GeneratedImage):
                    path = _output_path(output, event.index, count)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(event.png)
                    written.append(path)
                elif isinstance(event, ImageFinished):
                    break
        finally:
            if progress is not None:
                progress.__exit__(None, None, None)
    for path in written:
        typer.echo(f"{path}")


def _number(option: str, text: str, part: str) -> float:
    try:
        return float(part)
    except ValueError:
        raise fail(f"{option} {text!r}: {part!r} is not a number") from None


def _read(option: str, text: str, path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise fail(f"{option} {text!r}: cannot read {path} ({error.strerror})") from None


def _reference(text: str) -> dict:
    """PATH[:strength[:information]]; a path may itself hold colons (only trailing numbers split off)."""
    parts = text.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 2 and _is_number(parts[-1]):
        numbers.insert(0, float(parts.pop()))
    item: dict = {"image": _read("--reference", text, ":".join(parts))}
    if numbers:
        item["strength"] = numbers[0]
    if len(numbers) > 1:
        item["information_extracted"] = numbers[1]
    return item


def _control(text: str) -> dict:
    kind, _, rest = text.partition(":")
    if not rest:
        raise fail(f"--control expects KIND:PATH[:strength], got {text!r}")
    path, strength = rest, None
    head, _, tail = rest.rpartition(":")
    if head and _is_number(tail):
        path, strength = head, float(tail)
    item: dict = {"kind": kind}
    data = _read("--control", text, path)
    if kind == "pose":
        item["pose_json"] = data.decode("utf-8", errors="replace")
    else:
        item["image"] = data
    if strength is not None:
        item["strength"] = strength
    return item


def _character(text: str) -> dict:
    prompt, separator, region = text.rpartition("@")
    if not separator:
        return {"prompt": text}
    if "," not in region:
        return {"prompt": prompt, "center": region.strip()}
    values = [_number("--character", text, part) for part in region.split(",")]
    if len(values) != 4:
        raise fail(f"--character expects prompt@x,y,w,h (four fractions) or prompt@C3, got {text!r}")
    return {"prompt": prompt, **dict(zip(("x", "y", "width", "height"), values))}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def register(app: typer.Typer) -> None:
    app.command("image")(image)
