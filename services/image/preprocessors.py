"""Control preprocessors: turn an uploaded image (or pose keypoints) into the image a ControlNet reads.

The ones that need no model run everywhere: Canny edges (OpenCV), line art (edges with
thresholds taken from the image's own median brightness, thickened a little, as line-art
ControlNets expect white lines on black), a user-drawn scribble (strokes of either colour on a
plain background, made white on black), and a pose given as OpenPose keypoints JSON, drawn as
the standard OpenPose skeleton (COCO-18 joints, the usual colours for limbs and joints, on
black). The ones that need a model load it from a local file the operator configures and are
refused with FAILED_PRECONDITION naming the setting when none is: depth
(`FABULA_IMAGE_DEPTH_MODEL`, a transformers depth-estimation folder) and background removal
(`FABULA_IMAGE_BACKGROUND_REMOVAL_MODEL`, a U2-Net-style ONNX file as rembg ships).
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import Image

from services.toolkit.errors import FailedPrecondition, InvalidArgument


class ControlKind(str, Enum):
    CANNY = "canny"
    LINEART = "lineart"
    SCRIBBLE = "scribble"
    POSE = "pose"
    DEPTH = "depth"
    BACKGROUND_REMOVAL = "background_removal"
    RAW = "raw"


MAX_POSE_JSON = 256 * 1024
MAX_PEOPLE = 32
POSE_JOINTS = 18
# OpenPose's COCO-18 limbs (joint pairs, 0-based) and colours, as the ControlNet pose models were trained on.
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
COLOURS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]


@dataclass
class Pose:
    width: int
    height: int
    people: list[list[tuple[float, float, float]]]  # per person, 18 joints (x, y, confidence) in pixels


def parse_pose(field: str, text: str) -> Pose:
    """OpenPose JSON: {"canvas_width", "canvas_height", "people": [{"pose_keypoints_2d": [x, y, c, ...]}]}."""
    if not text:
        raise InvalidArgument(field, "<empty>", "a pose control needs its keypoints JSON")
    if len(text) > MAX_POSE_JSON:
        raise InvalidArgument(field, f"<{len(text)} characters>", f"must be at most {MAX_POSE_JSON} characters")
    try:
        data = json.loads(text)
    except ValueError as error:
        raise InvalidArgument(field, text[:80], f"not JSON ({error})") from None
    if isinstance(data, list):  # controlnet_aux and some editors write a list of frames
        data = data[0] if data and isinstance(data[0], dict) else {}
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        raise InvalidArgument(field, text[:80], 'expected an object with "people": [{"pose_keypoints_2d": [...]}]')
    width, height = data.get("canvas_width", 512), data.get("canvas_height", 512)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 64 <= v <= 4096 for v in (width, height)):
        raise InvalidArgument(field, f"{width}x{height}", "canvas_width and canvas_height must be integers, 64 to 4096")
    if len(data["people"]) > MAX_PEOPLE:
        raise InvalidArgument(field, f"<{len(data['people'])} people>", f"at most {MAX_PEOPLE} people")
    people = []
    for index, person in enumerate(data["people"]):
        points = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if (not isinstance(points, list) or len(points) != POSE_JOINTS * 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in points)):
            raise InvalidArgument(field, f"people[{index}]", f"pose_keypoints_2d must be {POSE_JOINTS * 3} numbers "
                                                             "(x, y, confidence per COCO-18 joint)")
        # Normalised coordinates (all within [0, 1]) are scaled to the canvas, as some editors write them.
        normalised = all(0 <= points[i] <= 1 and 0 <= points[i + 1] <= 1 for i in range(0, len(points), 3))
        scale = (width, height) if normalised else (1, 1)
        people.append([(points[i] * scale[0], points[i + 1] * scale[1], points[i + 2])
                       for i in range(0, len(points), 3)])
    return Pose(width, height, people)


def draw_pose(pose: Pose, width: int, height: int) -> Image.Image:
    """The OpenPose skeleton image: limbs as coloured ellipses (60% opacity) and joints as dots, on black."""
    import cv2

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    sx, sy = width / pose.width, height / pose.height
    stick = max(1, round(4 * min(width, height) / 512))
    for person in pose.people:
        for index, (a, b) in enumerate(LIMBS):
            (xa, ya, ca), (xb, yb, cb) = person[a], person[b]
            if ca <= 0 or cb <= 0:
                continue
            xa, ya, xb, yb = xa * sx, ya * sy, xb * sx, yb * sy
            length = math.hypot(xa - xb, ya - yb)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            polygon = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), stick),
                                       int(angle), 0, 360, 1)
            layer = canvas.copy()
            cv2.fillConvexPoly(layer, polygon, COLOURS[index])
            canvas = cv2.addWeighted(canvas, 0.4, layer, 0.6, 0)
        for index, (x, y, confidence) in enumerate(person):
            if confidence > 0:
                cv2.circle(canvas, (int(x * sx), int(y * sy)), stick, COLOURS[index], thickness=-1)
    return Image.fromarray(canvas)


def canny(image: Image.Image, low: int, high: int) -> Image.Image:
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(edges).convert("RGB")


def lineart(image: Image.Image) -> Image.Image:
    import cv2

    grey = cv2.GaussianBlur(np.asarray(image.convert("L")), (3, 3), 0)
    median = float(np.median(grey))
    edges = cv2.Canny(grey, int(max(0, 0.66 * median)), int(min(255, 1.33 * median)) or 1)
    edges = cv2.dilate(edges, np.ones((2, 2), np.uint8))
    return Image.fromarray(edges).convert("RGB")


def scribble(image: Image.Image) -> Image.Image:
    """Strokes (dark on light or light on dark, or opaque on a transparent layer) → white on black."""
    import cv2

    if image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema()[0] < 255:
        strokes = np.asarray(image.getchannel("A")) > 127
    else:
        grey = np.asarray(image.convert("L"))
        background_light = np.median(grey) > 127
        strokes = grey < 128 if background_light else grey >= 128
    lines = (strokes * 255).astype(np.uint8)
    lines = cv2.dilate(lines, np.ones((3, 3), np.uint8))
    return Image.fromarray(lines).convert("RGB")


class _ModelCache:
    """Operator-configured preprocessor models, loaded on first use (once per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, Path], object] = {}

    def get(self, kind: str, path: Path, load):
        with self._lock:
            key = (kind, path)
            if key not in self._loaded:
                self._loaded[key] = load(path)
            return self._loaded[key]


_MODELS = _ModelCache()


def _load_depth(path: Path):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    try:
        processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForDepthEstimation.from_pretrained(str(path), local_files_only=True).eval()
    except (OSError, ValueError) as error:
        raise FailedPrecondition(f"FABULA_IMAGE_DEPTH_MODEL {str(path)!r} is not a transformers depth-estimation "
                                 f"folder ({error})") from error
    return processor, model


def depth(image: Image.Image, model_path: Path | None) -> Image.Image:
    import torch

    if model_path is None:
        raise FailedPrecondition("depth controls need a depth model: set FABULA_IMAGE_DEPTH_MODEL to a local "
                                 "transformers depth-estimation folder (DPT, Depth Anything)")
    processor, model = _MODELS.get("depth", Path(model_path), _load_depth)
    with torch.inference_mode():
        inputs = processor(images=image.convert("RGB"), return_tensors="pt")
        predicted = model(**inputs).predicted_depth
    values = predicted[0].float().numpy()
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return Image.fromarray((scaled * 255).astype(np.uint8)).resize(image.size, Image.BICUBIC).convert("RGB")


def _load_saliency(path: Path):
    try:
        import onnxruntime
    except ImportError as error:
        raise FailedPrecondition("background removal runs its ONNX model with onnxruntime, which is not "
                                 "installed") from error
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001  onnxruntime raises its own exception types
        raise FailedPrecondition(f"FABULA_IMAGE_BACKGROUND_REMOVAL_MODEL {str(path)!r} is not a loadable ONNX "
                                 f"model ({error})") from error


def remove_background(image: Image.Image, model_path: Path | None) -> Image.Image:
    """The subject on white, where the saliency model says it is (rembg's U2-Net preprocessing)."""
    if model_path is None:
        raise FailedPrecondition("background removal needs a model: set FABULA_IMAGE_BACKGROUND_REMOVAL_MODEL to a "
                                 "local U2-Net-style ONNX file")
    session = _MODELS.get("background_removal", Path(model_path), _load_saliency)
    model_input = session.get_inputs()[0]
    side = model_input.shape[2] if isinstance(model_input.shape[2], int) else 320
    rgb = image.convert("RGB")
    values = np.asarray(rgb.resize((side, side), Image.LANCZOS), dtype=np.float32) / max(1.0, float(np.max(rgb)))
    values = (values - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
    output = session.run(None, {model_input.name: values.transpose(2, 0, 1)[None].astype(np.float32)})[0]
    saliency = np.asarray(output, dtype=np.float32).reshape(output.shape[-2], output.shape[-1])
    low, high = float(saliency.min()), float(saliency.max())
    saliency = (saliency - low) / (high - low) if high > low else np.zeros_like(saliency)
    alpha = Image.fromarray((saliency * 255).astype(np.uint8)).resize(image.size, Image.LANCZOS)
    result = Image.new("RGB", image.size, (255, 255, 255))
    result.paste(rgb, mask=alpha)
    return result


@dataclass
class ControlSource:
    """What one preprocessor needs (already validated)."""

    kind: ControlKind
    image: Image.Image | None
    pose: Pose | None
    low_threshold: int
    high_threshold: int


def preprocess(source: ControlSource, width: int, height: int, *, depth_model: Path | None,
               background_removal_model: Path | None) -> Image.Image:
    """The control image at `width` x `height`, as the ControlNet reads it."""
    if source.kind == ControlKind.POSE:
        return draw_pose(source.pose, width, height)
    image = source.image.resize((width, height), Image.LANCZOS) if source.image.size != (width, height) \
        else source.image
    if source.kind == ControlKind.CANNY:
        return canny(image, source.low_threshold, source.high_threshold)
    if source.kind == ControlKind.LINEART:
        return lineart(image)
    if source.kind == ControlKind.SCRIBBLE:
        return scribble(image)
    if source.kind == ControlKind.DEPTH:
        return depth(image, depth_model)
    if source.kind == ControlKind.BACKGROUND_REMOVAL:
        return remove_background(image, background_removal_model)
    return image.convert("RGB")
