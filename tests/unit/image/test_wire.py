"""wire.py: protobuf ⇄ domain for the image service, and that it is the only place doing it."""

from __future__ import annotations

import ast
from pathlib import Path

from fabula.image.v1 import image_pb2
from services.image import wire
from services.image.events import Accepted, Finished, GeneratedImage, Progress, PromptReport, StageReport
from services.image.params import Action
from services.image.prompts import Dialect

IMAGE_SERVICE = Path(__file__).resolve().parents[3] / "services" / "image"


def test_a_bare_request_leaves_every_optional_field_unset() -> None:
    raw = wire.raw_request_from_pb(image_pb2.GenerateRequest(params=image_pb2.GenerationParams(prompt="a fox")))
    assert raw.action == Action.TXT2IMG and raw.prompt == "a fox"
    assert (raw.quality_tags, raw.guidance_scale, raw.seed, raw.strength) == (None, None, None, None)
    assert raw.noise_schedule == "" and raw.masked_content == ""
    assert raw.dialect == "novelai"  # the contract's default
    a1111 = image_pb2.GenerationParams(dialect=image_pb2.PROMPT_DIALECT_A1111)
    assert wire.raw_request_from_pb(image_pb2.GenerateRequest(params=a1111)).dialect == "a1111"


def test_optional_fields_set_to_their_zero_value_stay_set() -> None:
    params = image_pb2.GenerationParams(quality_tags=False, guidance_scale=0.0, seed=0)
    raw = wire.raw_request_from_pb(image_pb2.GenerateRequest(params=params, img2img=image_pb2.ImageToImage(
        image=b"png", strength=0.0, extra_noise=0.25)))
    assert (raw.quality_tags, raw.guidance_scale, raw.seed, raw.strength) == (False, 0.0, 0, 0.0)
    assert (raw.action, raw.image, raw.extra_noise) == (Action.IMG2IMG, b"png", 0.25)


def test_inpaint_and_outpaint_carry_their_own_fields() -> None:
    inpaint = wire.raw_request_from_pb(image_pb2.GenerateRequest(inpaint=image_pb2.Inpaint(
        image=b"i", mask=b"m", mask_blur=3, masked_content=image_pb2.MASKED_CONTENT_LATENT_NOISE, only_masked=True,
        only_masked_padding=16)))
    assert (inpaint.action, inpaint.image, inpaint.mask, inpaint.mask_blur) == (Action.INPAINT, b"i", b"m", 3)
    assert (inpaint.masked_content, inpaint.only_masked, inpaint.only_masked_padding) == ("latent_noise", True, 16)
    outpaint = wire.raw_request_from_pb(image_pb2.GenerateRequest(outpaint=image_pb2.Outpaint(
        image=b"o", left=64, right=0, top=128, bottom=0, masked_content=image_pb2.MASKED_CONTENT_FILL)))
    assert (outpaint.action, outpaint.left, outpaint.top, outpaint.masked_content) == (Action.OUTPAINT, 64, 128, "fill")
    assert outpaint.mask_blur is None and outpaint.strength is None


def test_an_enum_number_this_build_does_not_know_reaches_validation_by_number() -> None:
    raw = wire.raw_request_from_pb(image_pb2.GenerateRequest(params=image_pb2.GenerationParams(noise_schedule=9)))
    assert raw.noise_schedule == "<unknown 9>"
    unknown = wire.raw_request_from_pb(image_pb2.GenerateRequest(params=image_pb2.GenerationParams(dialect=5)))
    assert unknown.dialect == "<unknown 5>"


def test_the_enum_tables_name_every_value_the_contract_has() -> None:
    assert set(wire.NOISE_SCHEDULES.values()) == set(image_pb2.NoiseSchedule.values())
    assert set(wire.MASKED_CONTENTS.values()) == set(image_pb2.MaskedContent.values())
    assert set(wire.DIALECTS.values()) == set(image_pb2.PromptDialect.values()) and set(wire.DIALECTS) == set(Dialect)


def test_tokenize_arguments() -> None:
    assert wire.tokenize_args_from_pb(image_pb2.TokenizeRequest(prompt="a fox")) == ("", "a fox", False, "novelai", 0)
    assert wire.tokenize_args_from_pb(image_pb2.TokenizeRequest(
        model="xl", prompt="p", quality_tags=True, dialect=image_pb2.PROMPT_DIALECT_A1111, steps=12)) == (
        "xl", "p", True, "a1111", 12)


def _report(text: str) -> PromptReport:
    return PromptReport(token_count=2, chunks=[{"token_ids": [1, 2], "tokens": ["a", "fox"], "weights": [1.0, 1.1],
                                                "text": text}], dropped_words=["tail"], effective_prompt=text)


def test_a_report_carries_the_dialect_segments_and_stages() -> None:
    chunk = {"token_ids": [1], "tokens": ["cat</w>"], "weights": [1.1], "text": "cat"}
    segments = [{"text": "cat", "weight": 1.1, "chunk_break": False}, {"text": "", "weight": 0.0, "chunk_break": True}]
    stages = [StageReport(2, "(cat) BREAK", 1, segments, [chunk]), StageReport(4, "dog", 1, [], [])]
    report = wire.prompt_report_to_pb(PromptReport(1, [chunk], [], "[(cat) BREAK:dog:2]", Dialect.A1111, segments,
                                                   stages))
    assert report.dialect == image_pb2.PROMPT_DIALECT_A1111
    assert [(s.text, round(s.weight, 6), s.chunk_break) for s in report.segments] == [("cat", 1.1, False),
                                                                                      ("", 0.0, True)]
    assert [(s.until_step, s.text, s.token_count) for s in report.stages] == [(2, "(cat) BREAK", 1), (4, "dog", 1)]
    assert list(report.stages[0].chunks[0].tokens) == ["cat</w>"] and not report.stages[1].chunks


def test_each_event_becomes_its_own_response() -> None:
    accepted = wire.event_to_pb(Accepted(seeds=[7], width=64, height=128, steps=3, sampler="euler", model="tiny",
                                         prompt=_report("a fox"), negative_prompt=_report(""), queue_position=2))
    assert accepted.WhichOneof("event") == "accepted"
    assert (list(accepted.accepted.seeds), accepted.accepted.height, accepted.accepted.queue_position) == ([7], 128, 2)
    chunk = accepted.accepted.prompt.chunks[0]
    assert (list(chunk.tokens), list(chunk.weights)[1], chunk.text) == (["a", "fox"], 1.100000023841858, "a fox")
    assert list(accepted.accepted.prompt.dropped_words) == ["tail"]
    assert accepted.accepted.prompt.dialect == image_pb2.PROMPT_DIALECT_NOVELAI
    progress = wire.event_to_pb(Progress(step=1, total_steps=3, previews=[b"p"]))
    assert (progress.progress.step, list(progress.progress.previews)) == (1, [b"p"])
    image = wire.event_to_pb(GeneratedImage(index=0, seed=7, png=b"png", parameters="a fox", width=64, height=128))
    assert (image.image.seed, image.image.png, image.image.height) == (7, b"png", 128)
    finished = wire.event_to_pb(Finished(queue_seconds=0.5, generation_seconds=2.0))
    assert (finished.finished.queue_seconds, finished.finished.generation_seconds) == (0.5, 2.0)


def _imports_generated_code(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fabula."):
            return True
        if isinstance(node, ast.Import) and any(alias.name.startswith("fabula.") for alias in node.names):
            return True
    return False


def test_only_the_servicer_and_wire_import_generated_code() -> None:
    importing = {path.relative_to(IMAGE_SERVICE).as_posix() for path in IMAGE_SERVICE.rglob("*.py")
                 if _imports_generated_code(path)}
    assert importing == {"server.py", "wire.py"}
