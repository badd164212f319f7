"""Validation and preprocessing of reference images, controls and character regions (no model)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from services.image.attention import AttentionGuidance, _attend, _layer_size
from services.image.control import RawControl, check_source
from services.image.preprocessors import COLOURS, canny, draw_pose, lineart, parse_pose, remove_background, \
    scribble, depth
from services.image.references import RawReference, check_references
from services.image.regions import RawCharacter, check_characters, grid_box, latent_mask, segment_masks
from services.toolkit.errors import FailedPrecondition, InvalidArgument


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def square() -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill="black")
    return image


def characters(*raw: RawCharacter, limit: int = 6):
    return check_characters(list(raw), max_characters=limit, max_prompt_chars=1000)


@pytest.mark.parametrize("raw, field", [
    (RawCharacter("a", x=0.5, width=0.6, height=1.0), "characters[0].width"),
    (RawCharacter("a", y=0.9, width=0.1, height=0.2), "characters[0].height"),
    (RawCharacter("a", x=-0.1, width=0.5, height=0.5), "characters[0].x"),
    (RawCharacter("a", x=float("nan"), width=0.5, height=0.5), "characters[0].x"),
    (RawCharacter("a", x=0.1, width=0.0, height=0.5), "characters[0].width"),
    (RawCharacter("a", center="F9"), "characters[0].center"),
    (RawCharacter("a", center="C3", width=0.5), "characters[0].center"),
    (RawCharacter("  "), "characters[0].prompt"),
])
def test_regions_outside_the_canvas_or_malformed_are_refused_by_field(raw, field) -> None:
    with pytest.raises(InvalidArgument) as caught:
        characters(raw)
    assert caught.value.field == field


def test_thousands_of_characters_are_refused_before_anything_else() -> None:
    with pytest.raises(InvalidArgument) as caught:
        characters(*[RawCharacter("a")] * 5000)
    assert caught.value.field == "characters"


def test_grid_positions_and_rectangles_become_boxes() -> None:
    assert grid_box("c", "C3") == (0.25, 0.25, 0.75, 0.75)
    assert grid_box("c", "a1") == (0.0, 0.0, 0.35, 0.35)
    whole, left = characters(RawCharacter("a"), RawCharacter("b", x=0.0, y=0.0, width=0.5, height=1.0))
    assert whole.box == (0.0, 0.0, 1.0, 1.0) and left.box == (0.0, 0.0, 0.5, 1.0)
    mask = latent_mask(left.box, 4, 8)
    assert mask[:, :4].sum() == 16 and mask[:, 4:].sum() == 0
    tiny = latent_mask((0.5, 0.5, 0.51, 0.51), 4, 4)
    assert tiny.sum() == 1  # a region under one cell keeps the cell under its centre
    masks = segment_masks([left], 4, 8)
    assert masks.shape == (2, 4, 8) and masks[0].min() == 1 and masks[1, :, 4:].max() == 0


def test_attention_levels_are_found_from_the_query_count() -> None:
    assert _layer_size((64, 40), 64 * 40) == (64, 40)
    assert _layer_size((64, 40), 32 * 20) == (32, 20)
    assert _layer_size((24, 8), 3 * 1) == (3, 1)
    with pytest.raises(ValueError):
        _layer_size((64, 64), 1000)


def test_references_are_checked_by_field_and_counted_first() -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_references([RawReference(b"junk")] * 1000, max_references=4, max_input_pixels=4096 * 4096)
    assert caught.value.field == "references"
    with pytest.raises(InvalidArgument) as caught:
        check_references([RawReference(b"not an image")], max_references=4, max_input_pixels=4096 * 4096)
    assert caught.value.field == "references[0].image"
    huge = png(Image.new("RGB", (300, 300)))
    with pytest.raises(InvalidArgument) as caught:
        check_references([RawReference(png(square())), RawReference(huge)], max_references=4,
                         max_input_pixels=200 * 200)
    assert caught.value.field == "references[1].image"
    for field, raw in (("references[0].strength", RawReference(png(square()), strength=3.0)),
                       ("references[0].information_extracted", RawReference(png(square()), information_extracted=0.0))):
        with pytest.raises(InvalidArgument) as caught:
            check_references([raw], max_references=4, max_input_pixels=4096 * 4096)
        assert caught.value.field == field
    [reference] = check_references([RawReference(png(square()))], max_references=4, max_input_pixels=4096 * 4096)
    assert (reference.strength, reference.information_extracted) == (0.6, 1.0)


def test_canny_and_lineart_find_the_square_edges() -> None:
    for image in (canny(square(), 100, 200), lineart(square())):
        array = np.asarray(image)
        assert image.mode == "RGB" and array.shape == (64, 64, 3)
        assert array[14:18, 30].max() == 255 and array[32, 32].max() == 0 and array[2, 2].max() == 0


def test_scribbles_of_either_colour_become_white_on_black() -> None:
    dark_on_light = scribble(square())
    light_on_dark = scribble(Image.eval(square(), lambda v: 255 - v))
    assert np.asarray(dark_on_light)[32, 32].max() == 255 and np.asarray(dark_on_light)[2, 2].max() == 0
    assert np.asarray(light_on_dark)[32, 32].max() == 255 and np.asarray(light_on_dark)[2, 2].max() == 0
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(layer).line((0, 32, 63, 32), fill=(255, 255, 255, 255), width=3)
    assert np.asarray(scribble(layer))[32, 10].max() == 255 and np.asarray(scribble(layer))[5, 10].max() == 0


def pose_json(**overrides) -> str:
    joints = [[100 + 10 * (i % 3), 40 + 25 * i, 1] for i in range(18)]
    joints[17][2] = 0  # an unseen joint is not drawn
    data = {"canvas_width": 256, "canvas_height": 512,
            "people": [{"pose_keypoints_2d": [value for joint in joints for value in joint]}]}
    data.update(overrides)
    return json.dumps(data)


def test_a_pose_is_drawn_as_the_openpose_skeleton() -> None:
    pose = parse_pose("pose_json", pose_json())
    image = draw_pose(pose, 128, 256)  # half the canvas: keypoints scale with it
    array = np.asarray(image)
    assert image.size == (128, 256)
    # The nose (joint 0) is a red dot at (50, 20); the background is black.
    assert tuple(array[20, 50]) == COLOURS[0] and array[250, 5].max() == 0
    assert len({tuple(pixel) for pixel in array.reshape(-1, 3)}) > 10


@pytest.mark.parametrize("text", ["", "{", "[]", json.dumps({"people": [{"pose_keypoints_2d": [1, 2]}]}),
                                  pose_json(canvas_width=10), json.dumps({"people": [{}] * 100})])
def test_bad_pose_json_is_refused_by_field(text) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_pose("controls[0].pose_json", text)
    assert caught.value.field == "controls[0].pose_json"


@pytest.mark.parametrize("raw, field", [
    (RawControl(kind="sketchy", image=b"x"), "c.kind"),
    (RawControl(kind="canny", image=b"not an image"), "c.image"),
    (RawControl(kind="canny", low_threshold=300), "c.image"),
    (RawControl(kind="pose"), "c.pose_json"),
])
def test_control_sources_are_checked_by_field(raw, field) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_source(raw, "c", max_input_pixels=4096 * 4096)
    assert caught.value.field == field
    with pytest.raises(InvalidArgument) as caught:
        check_source(RawControl(kind="canny", image=png(square()), low_threshold=250, high_threshold=10), "c",
                     max_input_pixels=4096 * 4096)
    assert caught.value.field == "c.low_threshold"


def test_preprocessors_that_need_a_model_name_their_setting_when_none_is_configured() -> None:
    with pytest.raises(FailedPrecondition, match="FABULA_IMAGE_DEPTH_MODEL"):
        depth(square(), None)
    with pytest.raises(FailedPrecondition, match="FABULA_IMAGE_BACKGROUND_REMOVAL_MODEL"):
        remove_background(square(), None)


def test_background_removal_runs_a_u2net_style_onnx_model(tmp_path) -> None:
    """A saliency 'model' (bright = subject) exported to ONNX in rembg's layout, loaded from the file."""

    class Saliency(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid((x.mean(dim=1, keepdim=True)) * 4)

    path = tmp_path / "u2net.onnx"
    torch.onnx.export(Saliency(), (torch.zeros(1, 3, 320, 320),), str(path), input_names=["input.1"],
                      output_names=["out"], dynamo=False)
    subject = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(subject).ellipse((16, 16, 47, 47), fill=(250, 40, 40))
    result = np.asarray(remove_background(subject, path))
    assert tuple(result[2, 2]) == (255, 255, 255)  # background → white
    assert result[32, 32, 0] > 200 and result[32, 32, 1] < 120  # the subject kept


def test_depth_runs_a_local_transformers_depth_model(tmp_path) -> None:
    """A small random DPT saved as a transformers folder, loaded as an operator's would be."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16)
    DPTForDepthEstimation(config).save_pretrained(tmp_path / "dpt")
    DPTImageProcessor(size={"height": 64, "width": 64}, keep_aspect_ratio=False).save_pretrained(tmp_path / "dpt")
    image = Image.fromarray((np.random.RandomState(0).rand(80, 120, 3) * 255).astype(np.uint8))
    result = depth(image, tmp_path / "dpt")
    array = np.asarray(result)
    assert result.size == (120, 80) and result.mode == "RGB"
    assert array.min() == 0 and array.max() >= 250  # normalised to the full range
    with pytest.raises(FailedPrecondition, match="FABULA_IMAGE_DEPTH_MODEL"):
        depth(image, tmp_path / "missing")


def test_region_masks_repeat_per_segment_and_per_row(monkeypatch) -> None:
    left = segment_masks(characters(RawCharacter("b", x=0.0, y=0.0, width=0.5, height=1.0)), 4, 8)
    guidance = AttentionGuidance((4, 8), context_tokens=6, regions=[(left, 3), None],
                                 mask_rows=torch.tensor([0, 0, 1]))
    mask = guidance.mask_for(8)  # the level of 2x4 positions
    assert mask.shape == (3, 1, 8, 6)
    assert mask[0, 0, :, :3].all() and mask[2].all()
    assert mask[0, 0, 0, 3:].all() and not mask[0, 0, 3, 3:].any()  # (0, 0) inside, (0, 3) outside the region
    # Slicing the queries (for long masked contexts) gives the same attention.
    query, key, value = torch.randn(3, 2, 8, 4), torch.randn(3, 2, 6, 4), torch.randn(3, 2, 6, 4)
    whole = _attend(query, key, value, mask)
    monkeypatch.setattr("services.image.attention.MASKED_ATTENTION_BYTES", 3 * 2 * 6 * 4 * 3)
    torch.testing.assert_close(_attend(query, key, value, mask), whole)
