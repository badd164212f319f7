"""NovelAI's API under the prefix /novelai: /ai/generate-image (answered with a ZIP of PNGs, as
NovelAI's), /ai/generate and /ai/generate-stream; their bodies and their translation onto the
image and text services' protobuf.

NovelAI's body is `{"input": prompt, "model": ..., "action": ..., "parameters": {...}}`; the
parameters below are the ones NovelAI's clients send (SillyTavern's src/endpoints/novelai.js
sends `sm`, `sm_dyn`, `legacy`, `dynamic_thresholding`, `controlnet_strength`, `uncond_scale` and
`add_original_image` too: accepted and ignored, Fabula has no such controls).
"""

from __future__ import annotations

import io
import zipfile
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fabula.image.v1 import image_pb2
from fabula.text.v1 import text_pb2
from fabula_wire.sampling import MAX_STRING_CHARS, MAX_STRINGS
from gateway.errors import ApiError
from gateway.schemas.a1111 import NOISE_NOTE, ImageData, fabula_facts
from gateway.schemas.common import RequestBody, Text, float32_between
from gateway.schemas.compat import sampled
from gateway.schemas.text import GuidanceContext, Phrase

# The service names "params.width", "img2img.strength", "inpaint.mask"; NovelAI's body has them
# under "parameters".
FIELD_PREFIXES = ("params.", "img2img.", "inpaint.")

# NovelAI's sampler names and the Fabula sampler each one is.
SAMPLERS = {"k_euler": "euler", "k_euler_ancestral": "euler_ancestral", "k_dpmpp_2m": "dpmpp_2m",
            "k_dpmpp_2s_ancestral": "dpmpp_2s_ancestral", "k_dpmpp_sde": "dpmpp_sde",
            "k_dpmpp_2m_sde": "dpmpp_2m_sde", "ddim": "ddim", "ddim_v3": "ddim"}
NovelAISampler = Literal["k_euler", "k_euler_ancestral", "k_dpmpp_2m", "k_dpmpp_2s_ancestral", "k_dpmpp_sde",
                         "k_dpmpp_2m_sde", "ddim", "ddim_v3"]
SCHEDULES = {"native": image_pb2.NOISE_SCHEDULE_NATIVE, "karras": image_pb2.NOISE_SCHEDULE_KARRAS,
              "exponential": image_pb2.NOISE_SCHEDULE_EXPONENTIAL}
# NovelAI's ucPreset numbers: 0 Heavy, 1 Light, then model-specific focus presets and None; Fabula
# has heavy, light and none.
UC_PRESETS = {0: "heavy", 1: "light", 2: "none", 3: "none"}
# SillyTavern draws seeds below 9999999999 (beyond 32 bits); the image service's seeds are 32-bit.
SEED_MAX = 9_999_999_999
Size = Annotated[int, Field(ge=64, le=4096, multiple_of=64)]


class ImageParameters(RequestBody):
    width: Size | None = Field(None, description="multiple of 64; absent: the model's default")
    height: Size | None = Field(None, description="multiple of 64; absent: the model's default")
    scale: float32_between(0, 50) | None = Field(None, description="guidance; absent: the model's default")
    sampler: NovelAISampler | None = Field(None, description="absent: the model's default")
    steps: int | None = Field(None, ge=1, le=1000, description="absent: the model's default")
    n_samples: int = Field(1, ge=1, le=8)
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="taken modulo 2^32; absent: random")
    negative_prompt: Text = ""
    ucPreset: int = Field(0, ge=0, le=3, description="0 heavy, 1 light, 2 and 3 none")
    qualityToggle: bool = Field(True, description="add the model's quality tags")
    cfg_rescale: float32_between(0, 1) = 0.0
    noise_schedule: Literal["native", "karras", "exponential"] | None = None
    strength: float32_between(0, 1, low_open=True) | None = Field(
        None, description="img2img, infill: how much is redrawn")
    noise: float32_between(0, 0.99) = Field(0.0, description="img2img: extra noise")
    image: ImageData | None = Field(None, description="img2img, infill: the input image (base64)")
    mask: ImageData | None = Field(None, description="infill: white = redraw, the image's size (base64)")


# img2img needs parameters.image, infill parameters.image and parameters.mask (the image service
# refuses the action without them).
_ACTION_NEEDS = {"allOf": [{"anyOf": [
    {"properties": {"action": {"const": "generate"}}},
    {"properties": {"action": {"const": "img2img"},
                    "parameters": {"properties": {"image": {"type": "string"}}, "required": ["image"]}},
     "required": ["action", "parameters"]},
    {"properties": {"action": {"const": "infill"},
                    "parameters": {"properties": {"image": {"type": "string"}, "mask": {"type": "string"}},
                                   "required": ["image", "mask"]}},
     "required": ["action", "parameters"]}]}]}


class GenerateImageBody(RequestBody):
    model_config = ConfigDict(json_schema_extra=_ACTION_NEEDS)

    input: Text = Field(description="the prompt, in NovelAI's prompt language")
    model: Text = Field("", max_length=200, description="a Fabula model; NovelAI's model names (nai-*) and "
                                                        "unknown ones take the default model")
    action: Literal["generate", "img2img", "infill"] = "generate"
    parameters: ImageParameters = Field(default_factory=ImageParameters)

    def to_pb(self, model_names: set[str]) -> image_pb2.GenerateRequest:
        p = self.parameters
        params = image_pb2.GenerationParams(
            model=self.model if self.model in model_names else "", prompt=self.input,
            negative_prompt=p.negative_prompt, negative_preset=UC_PRESETS[p.ucPreset], quality_tags=p.qualityToggle,
            width=p.width or 0, height=p.height or 0, steps=p.steps or 0, guidance_rescale=p.cfg_rescale,
            sampler=SAMPLERS[p.sampler] if p.sampler else "", n_images=p.n_samples,
            dialect=image_pb2.PROMPT_DIALECT_NOVELAI)
        if p.scale is not None:
            params.guidance_scale = p.scale
        if p.noise_schedule is not None:
            params.noise_schedule = SCHEDULES[p.noise_schedule]
        if p.seed is not None:
            params.seed = p.seed % 2**32
        request = image_pb2.GenerateRequest(params=params)
        if self.action == "generate":
            request.txt2img.SetInParent()
        elif self.action == "img2img":
            request.img2img.image, request.img2img.extra_noise = p.image or b"", p.noise
            if p.strength is not None:
                request.img2img.strength = p.strength
        else:
            request.inpaint.image, request.inpaint.mask = p.image or b"", p.mask or b""
            if p.strength is not None:
                request.inpaint.strength = p.strength
        return request


def images_zip(images: list[image_pb2.Image]) -> bytes:
    """NovelAI's answer: image_0.png, image_1.png, ... stored uncompressed (PNG is compressed)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as out:
        for item in sorted(images, key=lambda image: image.index):
            out.writestr(f"image_{item.index}.png", item.png)
    return archive.getvalue()


def honesty_headers(images: list[image_pb2.Image]) -> dict[str, str]:
    """Response headers saying that the built-in model's pictures are noise (NovelAI's ZIP has no
    other place for it; each PNG's "fabula" chunk says builtin_model too)."""
    if images and fabula_facts(images[0].png).get("builtin_model"):
        return {"X-Fabula-Builtin-Model": "true", "X-Fabula-Note": NOISE_NOTE}
    return {}


# Text ------------------------------------------------------------------------------------------

# NovelAI's sampler numbers in `order`, and Fabula's samplers. CFG (6) is not a step in Fabula (it
# makes the distribution the steps start from); listing it switches guidance on. Top-g (7) has no
# Fabula counterpart.
ORDER_SAMPLERS = {0: text_pb2.SAMPLER_TEMPERATURE, 1: text_pb2.SAMPLER_TOP_K, 2: text_pb2.SAMPLER_TOP_P,
                  3: text_pb2.SAMPLER_TAIL_FREE, 4: text_pb2.SAMPLER_TOP_A, 5: text_pb2.SAMPLER_TYPICAL_P,
                  8: text_pb2.SAMPLER_MIROSTAT, 9: text_pb2.SAMPLER_UNIFIED, 10: text_pb2.SAMPLER_MIN_P}
CFG_ORDER_NUMBER = 6
OrderNumber = Literal[0, 1, 2, 3, 4, 5, 6, 8, 9, 10]
PhraseRepPen = Literal["off", "very_light", "light", "medium", "aggressive", "very_aggressive"]


# A stop sequence as NovelAI's API takes it: token ids (what SillyTavern and NovelAI's clients send),
# or, as Fabula also takes it, the string itself.
# The decoded text must be a stop sequence the text service takes (1 to MAX_STRING_CHARS characters),
# which depends on the model's tokenizer; a token decodes to a character or more, mostly.
TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=2**32 - 1)]], Field(min_length=1, max_length=MAX_STRING_CHARS)]
StopSequence = Phrase | TokenIds
# NovelAI's own cap on max_length and min_length; the text service's max_new_tokens may be lower
# (the document states the lower at run time).
MAX_LENGTH = 2048


class TextParameters(RequestBody):
    """NovelAI's text parameters, as SillyTavern's src/endpoints/novelai.js forwards them. Stop
    sequences given as token ids are decoded with the serving model's tokenizer. The other fields
    that hold token ids (bad_words_ids, logit_bias_exp, repetition_penalty_whitelist) are ignored,
    as are the controls Fabula has no counterpart for (top_g, prefix, use_cache, return_full_text,
    generate_until_sentence). Mirostat is NovelAI's (version 2, `mirostat_lr` its learning rate)."""

    use_string: bool = Field(True, description="only true: token-id input is NovelAI's tokenizer's",
                             json_schema_extra={"const": True})
    temperature: sampled("temperature") | None = None
    max_length: int = Field(40, ge=1, le=MAX_LENGTH, description="new tokens at most")
    min_length: int = Field(0, ge=0, le=MAX_LENGTH, description="new tokens at least; at most max_length")
    top_k: sampled("top_k") | None = None
    top_p: sampled("top_p") | None = None
    top_a: sampled("top_a") | None = None
    typical_p: sampled("typical_p") | None = None
    tail_free_sampling: sampled("tail_free") | None = None
    min_p: sampled("min_p") | None = None
    repetition_penalty: sampled("repetition_penalty") | None = None
    repetition_penalty_range: sampled("repetition_penalty_range") | None = None
    repetition_penalty_slope: sampled("repetition_penalty_slope") | None = None
    repetition_penalty_frequency: sampled("frequency_penalty") | None = None
    repetition_penalty_presence: sampled("presence_penalty") | None = None
    stop_sequences: list[StopSequence] | None = Field(
        None, max_length=MAX_STRINGS, description="token-id arrays, decoded with the serving model's tokenizer "
                                                  "(NovelAI's form), or strings")
    cfg_scale: sampled("cfg_scale") | None = Field(None, description="classifier-free guidance; 1 = off")
    cfg_uc: GuidanceContext | None = Field(None, description="the negative context for guidance")
    phrase_rep_pen: PhraseRepPen | None = None
    unified_linear: sampled("unified_linear") | None = None
    unified_quad: sampled("unified_quad") | None = None
    unified_conf: sampled("unified_conf") | None = None
    mirostat_tau: sampled("mirostat_tau") | None = Field(None, description="mirostat v2's target surprise; 0 = off")
    mirostat_lr: sampled("mirostat_eta") | None = Field(None, description="mirostat's learning rate")
    order: list[OrderNumber] | None = Field(None, description="0 temperature, 1 top-k, 2 top-p, 3 tail-free, "
                                                              "4 top-a, 5 typical, 6 CFG, 8 mirostat, 9 unified, "
                                                              "10 min-p; the rest are off")

    def sampling_pb(self) -> text_pb2.SamplingParameters:
        sampling = text_pb2.SamplingParameters()
        for ours, theirs in (("temperature", "temperature"), ("top_k", "top_k"), ("top_p", "top_p"),
                             ("top_a", "top_a"), ("typical_p", "typical_p"), ("tail_free", "tail_free_sampling"),
                             ("min_p", "min_p"), ("repetition_penalty", "repetition_penalty"),
                             ("repetition_penalty_range", "repetition_penalty_range"),
                             ("repetition_penalty_slope", "repetition_penalty_slope"),
                             ("frequency_penalty", "repetition_penalty_frequency"),
                             ("presence_penalty", "repetition_penalty_presence"),
                             ("unified_linear", "unified_linear"), ("unified_quad", "unified_quad"),
                             ("unified_conf", "unified_conf"), ("mirostat_tau", "mirostat_tau"),
                             ("mirostat_eta", "mirostat_lr")):
            value = getattr(self, theirs)
            if value is not None:
                setattr(sampling, ours, value)
        if self.mirostat_tau:
            sampling.mirostat = 2
        if self.phrase_rep_pen is not None:
            sampling.phrase_repetition_penalty = text_pb2.PhraseRepetitionPenalty.Value(
                f"PHRASE_REPETITION_PENALTY_{self.phrase_rep_pen.upper()}")
        guided = self.cfg_scale is not None and (not self.order or CFG_ORDER_NUMBER in self.order)
        if guided:
            sampling.cfg_scale = self.cfg_scale
            if self.cfg_uc is not None:
                sampling.cfg_uc = self.cfg_uc
        if self.order:
            listed = list(dict.fromkeys(ORDER_SAMPLERS[number] for number in self.order
                                        if number != CFG_ORDER_NUMBER))
            rest = [s for s in ORDER_SAMPLERS.values() if s not in listed]
            sampling.sampler_order.extend([text_pb2.SamplerStep(sampler=s, enabled=True) for s in listed]
                                          + [text_pb2.SamplerStep(sampler=s, enabled=False) for s in rest])
        return sampling


class GenerateTextBody(RequestBody):
    input: Text = Field(description="the text to continue")
    model: Text = Field("", max_length=200, description="a Fabula model; NovelAI's names (kayra-v1, clio-v1, ...) "
                                                        "and unknown ones take the default model")
    parameters: TextParameters = Field(default_factory=TextParameters)

    def model_name(self, model_names: set[str]) -> str:
        """The Fabula model to serve it: the one named, else ("") the default."""
        return self.model if self.model in model_names else ""

    def stop_token_ids(self) -> dict[int, list[int]]:
        """The stop sequences given as token ids, by their index in stop_sequences."""
        return {index: stop for index, stop in enumerate(self.parameters.stop_sequences or [])
                if isinstance(stop, list)}

    def to_pb(self, model_names: set[str], decoded_stops: dict[int, str] | None = None) -> text_pb2.GenerationSpec:
        """`decoded_stops`: the text of each token-id stop sequence, by index."""
        p = self.parameters
        if not p.use_string:
            raise ApiError(400, "parameters.use_string: only text input is served (true); token ids are "
                                "NovelAI's tokenizer's", field="parameters.use_string")
        decoded = decoded_stops or {}
        stops = [decoded[index] if isinstance(stop, list) else stop
                 for index, stop in enumerate(p.stop_sequences or [])]
        return text_pb2.GenerationSpec(model=self.model_name(model_names), prompt=self.input,
                                       sampling=p.sampling_pb(), max_new_tokens=p.max_length,
                                       min_new_tokens=p.min_length, stop_sequences=stops)


# The text service's field names (after "spec.") as NovelAI's body names them.
TEXT_FIELD_PREFIXES = ("spec.",)
TEXT_FIELDS = {"prompt": "input", "model": "model", "max_new_tokens": "parameters.max_length",
               "min_new_tokens": "parameters.min_length", "stop_sequences": "parameters.stop_sequences",
               "sampling.tail_free": "parameters.tail_free_sampling",
               "sampling.frequency_penalty": "parameters.repetition_penalty_frequency",
               "sampling.presence_penalty": "parameters.repetition_penalty_presence",
               "sampling.sampler_order": "parameters.order", "sampling.cfg_uc": "parameters.cfg_uc",
               "sampling.phrase_repetition_penalty": "parameters.phrase_rep_pen",
               "sampling.mirostat_eta": "parameters.mirostat_lr"}


def text_body_field(field: str) -> str:
    if field in TEXT_FIELDS:
        return TEXT_FIELDS[field]
    for prefix in ("sampling.", "stop_sequences"):
        if field.startswith(prefix):
            return "parameters." + field.removeprefix("sampling.")
    return field


class GenerateTextAnswer(BaseModel):
    output: str = Field(description="the continuation")


class TokenEvents:
    """NovelAI's stream: `newToken` events with the text piece, its position and whether it is the
    last; one instance per stream (it counts the pieces)."""

    def __init__(self) -> None:
        self._ptr = 0

    def __call__(self, message: text_pb2.GenerateStreamResponse) -> tuple[str, Any]:
        if message.WhichOneof("event") == "final":
            return "newToken", {"token": "", "ptr": self._ptr, "final": True}
        data = {"token": message.piece.text, "ptr": self._ptr, "final": False}
        self._ptr += 1
        return "newToken", data
