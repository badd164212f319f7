"""fabula image PROMPT -o out.png  — generates an image with a progress bar and saves it; also
`fabula upscale`, `fabula enhance`, `fabula variations`, `fabula image-info` and `fabula tags`."""

from __future__ import annotations

import json
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
    hires: Annotated[float | None, typer.Option("--hires", help="hires fix: a second pass enlarged this much (1-4)")
                     ] = None,
    hires_steps: Annotated[int, typer.Option("--hires-steps", min=0, help="hires fix: second-pass steps")] = 0,
    hires_strength: Annotated[float | None, typer.Option("--hires-strength", help="hires fix: (0, 1]")] = None,
    hires_upscaler: Annotated[str, typer.Option("--hires-upscaler", help="latent, lanczos or a model")] = "",
    threshold: Annotated[float, typer.Option("--dynamic-thresholding", help="percentile in (0, 1); 0 off")] = 0.0,
    rho: Annotated[float | None, typer.Option("--rho", help="polyexponential schedule's rho")] = None,
) -> None:
    """Generate an image from PROMPT and save it as a PNG (parameters embedded), with progress."""
    options: dict = {"prompt": prompt, "negative_prompt": negative, "negative_preset": preset, "width": width,
                     "height": height, "steps": steps, "guidance_rescale": rescale, "sampler": sampler,
                     "n_images": count, "model": model}
    if no_quality_tags:
        options["quality_tags"] = False
    for key, value in (("guidance_scale", scale), ("noise_schedule", schedule), ("seed", seed),
                       ("strength", strength), ("schedule_rho", rho)):
        if value is not None:
            options[key] = value
    if threshold:
        options["dynamic_thresholding"] = threshold
    if hires is not None:
        if init_image is not None:
            raise fail("--hires is for text to image (no --image)")
        options["hires"] = {"scale": hires, "steps": hires_steps, "upscaler": hires_upscaler}
        if hires_strength is not None:
            options["hires"]["strength"] = hires_strength
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
    _run(ctx, options, output, count)


def _client(ctx: typer.Context) -> ImageClient:
    saved = state(ctx).sessions.load()
    if saved is None:
        raise fail("not logged in: run `fabula login` (or `fabula register`) first")
    return ImageClient(state(ctx).url or saved.url, saved.token)


def _run(ctx: typer.Context, options: dict, output: Path, count: int) -> None:
    """Stream one generation with a progress bar and write its PNGs."""
    written: list[Path] = []
    with _client(ctx) as ai:
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
def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise fail(f"cannot read {path}: {error.strerror}") from None


@handle_errors
def upscale(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="the image to enlarge")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file")] = Path("upscaled.png"),
    scale: Annotated[float, typer.Option("--scale", help="factor (1-8); 0 = 2")] = 0.0,
    width: Annotated[int, typer.Option("--width", "-W", min=0, help="exact width (any size)")] = 0,
    height: Annotated[int, typer.Option("--height", "-H", min=0, help="exact height (any size)")] = 0,
    upscaler: Annotated[str, typer.Option("--upscaler", help="lanczos or a model (fabula image models)")] = "",
) -> None:
    """Enlarge an image, without redrawing it."""
    _run(ctx, {"action": "upscale", "image": _read_file(source), "scale": scale, "width": width, "height": height,
               "upscaler": upscaler}, output, 1)


@handle_errors
def enhance(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="the image to enhance")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="what the image shows")] = "",
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file")] = Path("enhanced.png"),
    scale: Annotated[float, typer.Option("--scale", help="factor (1-4); 0 = 1.5")] = 0.0,
    strength: Annotated[float | None, typer.Option("--strength", help="how much is redrawn; default 0.4")] = None,
    upscaler: Annotated[str, typer.Option("--upscaler", help="lanczos or a model")] = "",
    seed: Annotated[int | None, typer.Option("--seed", min=0)] = None,
    steps: Annotated[int, typer.Option("--steps", "-s", min=0)] = 0,
) -> None:
    """NovelAI's enhance: enlarge, then redraw lightly at the new size."""
    options: dict = {"action": "enhance", "image": _read_file(source), "prompt": prompt, "scale": scale,
                     "upscaler": upscaler, "steps": steps}
    for key, value in (("strength", strength), ("seed", seed)):
        if value is not None:
            options[key] = value
    _run(ctx, options, output, 1)


@handle_errors
def variations(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="the image to vary")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG files (-1, -2, ...)")] = Path("variation.png"),
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="number of variations")] = 4,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="default: the prompt in the image's metadata")] = "",
    strength: Annotated[float | None, typer.Option("--strength", help="how much is redrawn; default 0.35")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0)] = None,
    steps: Annotated[int, typer.Option("--steps", "-s", min=0)] = 0,
) -> None:
    """Variations of an image: its prompt, new seeds, a light redraw."""
    options: dict = {"action": "variations", "image": _read_file(source), "prompt": prompt, "n_images": count,
                     "steps": steps}
    for key, value in (("strength", strength), ("seed", seed)):
        if value is not None:
            options[key] = value
    _run(ctx, options, output, count)


@handle_errors
def image_info(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="a PNG")],
) -> None:
    """How a PNG was made (as options to run again) and whether this server's signature verifies."""
    with _client(ctx) as ai:
        found = ai.metadata(_read_file(source))
    typer.echo(f"source: {found['source']}")
    typer.echo(f"signature: {found['signature']}" + (f" (key {found['signing_key_id']})"
                                                     if found["signing_key_id"] else ""))
    if found["builtin_model"]:
        typer.echo("made by a built-in untrained test model: its pictures are noise (docs/image.md)")
    if found["request"] is not None:
        typer.echo(json.dumps(found["request"], indent=2, ensure_ascii=False))


@handle_errors
def tags(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="the start of a tag (typos are forgiven)")],
    limit: Annotated[int, typer.Option("--limit", "-l", min=1, max=100)] = 10,
) -> None:
    """Suggest prompt tags: name, category, post count."""
    with _client(ctx) as ai:
        for tag in ai.tags(query, limit):
            alias = f" (alias {tag['matched_alias']})" if tag["matched_alias"] else ""
            typer.echo(f"{tag['text']}\t{tag['category']}\t{tag['post_count']}{alias}")


def register(app: typer.Typer) -> None:
    app.command("image")(image)
    app.command("upscale")(upscale)
    app.command("enhance")(enhance)
    app.command("variations")(variations)
    app.command("image-info")(image_info)
    app.command("tags")(tags)
