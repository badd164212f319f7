"""The OpenAPI document with the limits this deployment enforces.

Some bounds are not the gateway's to know when the app is built: the text service's
`max_new_tokens` and `max_prompt_chars`, each model's vocabulary size, the image service's
`max_steps` and `max_images`, the model and preset names. The services report them (text and image `ListModels`); the
gateway asks once they answer and from then on serves `/openapi.json` with those bounds written
into the request bodies (`RUNTIME_BOUNDS`), so that a request valid by the document is one the
services accept. Until both have answered, the document is the static one, and the gateway keeps
asking in the background.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from fabula.image.v1 import image_pb2
from fabula.text.v1 import text_pb2
from fabula_wire.sampling import MAX_TOKEN_COUNT
from gateway import image_contract
from gateway.schemas.compat import at_most_pattern
from gateway.schemas.novelai import MAX_LENGTH as NOVELAI_MAX_LENGTH

log = logging.getLogger(__name__)

# How long one round of asking the services may take, and how long to wait before the next
# round while one of them does not answer yet.
ASK_TIMEOUT_S = 10.0
RETRY_S = 2.0


@dataclass(frozen=True)
class ServiceLimits:
    """What the text and image services reported about themselves."""

    text_models: tuple[str, ...]
    max_new_tokens: int
    max_prompt_chars: int
    vocab_size: int  # the smallest of the text models': a token id must be valid for every model
    image_models: tuple[str, ...]
    max_steps: int
    max_images: int
    presets: tuple[str, ...] = ()
    # The image service's catalogue: its names and the relations between them (gateway/image_contract.py).
    image_catalogue: image_pb2.ListModelsResponse | None = None


Keywords = Callable[[ServiceLimits], dict[str, Any]]


def _names(names: tuple[str, ...]) -> dict[str, Any]:
    # The empty name means the default (model, or preset).
    return {"enum": ["", *names]}


def _top_k(limits: ServiceLimits) -> dict[str, Any]:
    return {"maximum": min(limits.vocab_size, MAX_TOKEN_COUNT)}


def _token_ids(limits: ServiceLimits) -> dict[str, Any]:
    return {"maximum": limits.vocab_size - 1}


def _token_id_keys(limits: ServiceLimits) -> dict[str, Any]:
    # logit_bias as an object keyed by token ids (OpenAI's, KoboldCpp's).
    return {"propertyNames": {"pattern": at_most_pattern(limits.vocab_size - 1)}}


def _prompt_chars(limits: ServiceLimits) -> dict[str, Any]:
    return {"maxLength": limits.max_prompt_chars}


KOBOLD = "gateway__schemas__kobold__GenerateBody"
OPENAI = ("CompletionBody", "ChatCompletionBody")

# (component schema, property, where in the property, keywords from the limits). Where: "" for the
# property's value (each branch of an optional or a union), then steps separated by "/": "items"
# for a list's items, a JSON type ("string", "array") for the branches of that type only.
# Each states a bound the services enforce and that only they know.
RUNTIME_BOUNDS: tuple[tuple[str, str, str, Keywords], ...] = (
    ("gateway__schemas__text__GenerateBody", "model", "", lambda lim: _names(lim.text_models)),
    ("gateway__schemas__text__GenerateBody", "max_new_tokens", "", lambda lim: {"maximum": lim.max_new_tokens}),
    ("gateway__schemas__text__GenerateBody", "prompt", "", lambda lim: {"maxLength": lim.max_prompt_chars}),
    ("gateway__schemas__text__GenerateBody", "preset", "", lambda lim: _names(lim.presets)),
    ("CompletionBody", "preset", "", lambda lim: _names(lim.presets)),
    ("ChatCompletionBody", "preset", "", lambda lim: _names(lim.presets)),
    ("TokenizeBody", "model", "", lambda lim: _names(lim.text_models)),
    ("TokenizeBody", "text", "", lambda lim: {"maxLength": lim.max_prompt_chars}),
    ("LogitBias", "token_id", "", lambda lim: {"maximum": lim.vocab_size - 1}),
    ("StoryContext", "story", "", _prompt_chars),
    ("Sampling", "top_k", "", _top_k),
    ("Sampling", "repetition_penalty_whitelist", "items", _token_ids),
    (KOBOLD, "max_length", "", lambda lim: {"maximum": lim.max_new_tokens}),
    (KOBOLD, "prompt", "", _prompt_chars),
    (KOBOLD, "top_k", "", _top_k),
    (KOBOLD, "logit_bias", "", _token_id_keys),
    ("GenerateTextBody", "input", "", _prompt_chars),
    ("TextParameters", "max_length", "", lambda lim: {"maximum": min(NOVELAI_MAX_LENGTH, lim.max_new_tokens)}),
    ("TextParameters", "top_k", "", _top_k),
    ("TextParameters", "stop_sequences", "items/array/items", _token_ids),
    ("CompletionBody", "prompt", "string", _prompt_chars),
    ("CompletionBody", "prompt", "array/items", _prompt_chars),
    *((body, "model", "", lambda lim: _names(lim.text_models)) for body in OPENAI),
    *((body, "top_k", "", _top_k) for body in OPENAI),
    *((body, "logit_bias", "", _token_id_keys) for body in OPENAI),
    ("CompletionBody", "max_tokens", "", lambda lim: {"maximum": lim.max_new_tokens}),
    ("ChatCompletionBody", "max_tokens", "", lambda lim: {"maximum": lim.max_new_tokens}),
    ("ChatCompletionBody", "max_completion_tokens", "", lambda lim: {"maximum": lim.max_new_tokens}),
    ("gateway__schemas__image__GenerateImageBody", "model", "", lambda lim: _names(lim.image_models)),
    ("gateway__schemas__image__GenerateImageBody", "steps", "", lambda lim: {"maximum": lim.max_steps}),
    ("gateway__schemas__image__GenerateImageBody", "preview_every", "", lambda lim: {"maximum": lim.max_steps}),
    ("gateway__schemas__image__GenerateImageBody", "n_images", "", lambda lim: {"maximum": lim.max_images}),
    ("TokenizeImageBody", "model", "", lambda lim: _names(lim.image_models)),
    ("TokenizeImageBody", "steps", "", lambda lim: {"maximum": lim.max_steps}),
    ("ImageParameters", "steps", "", lambda lim: {"maximum": lim.max_steps}),
    ("Txt2ImgBody", "steps", "", lambda lim: {"maximum": lim.max_steps}),
    ("Img2ImgBody", "steps", "", lambda lim: {"maximum": lim.max_steps}),
    ("Txt2ImgBody", "hr_second_pass_steps", "", lambda lim: {"maximum": lim.max_steps}),
    ("Txt2ImgBody", "batch_size", "", lambda lim: {"maximum": lim.max_images}),
    ("Txt2ImgBody", "n_iter", "", lambda lim: {"maximum": lim.max_images}),
    ("Img2ImgBody", "batch_size", "", lambda lim: {"maximum": lim.max_images}),
    ("Img2ImgBody", "n_iter", "", lambda lim: {"maximum": lim.max_images}),
    ("HiresBody", "steps", "", lambda lim: {"maximum": lim.max_steps}),
    ("ImageParameters", "n_samples", "", lambda lim: {"maximum": lim.max_images}),
)


def _typed_branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of a property schema that describe a value (not the `null` of an optional one)."""
    if "anyOf" in schema:
        return [branch for branch in schema["anyOf"] if branch.get("type") != "null"]
    return [schema]


def _targets(schema: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The parts of a property schema that `where` names (see RUNTIME_BOUNDS)."""
    targets = _typed_branches(schema)
    for step in where.split("/") if where else []:
        if step == "items":
            targets = [target["items"] for target in targets if "items" in target]
        else:
            targets = [branch for target in targets for branch in _typed_branches(target)
                       if branch.get("type") == step]
    return targets


def apply_limits(document: dict[str, Any], limits: ServiceLimits) -> dict[str, Any]:
    """A copy of `document` with `RUNTIME_BOUNDS` written in."""
    document = copy.deepcopy(document)
    components = document.get("components", {}).get("schemas", {})
    for component, name, where, keywords in RUNTIME_BOUNDS:
        schema = components.get(component, {}).get("properties", {}).get(name)
        targets = [] if schema is None else _targets(schema, where)
        if not targets:
            raise LookupError(f"the OpenAPI document has no {component}.{name} ({where or 'value'}) to bound")
        for target in targets:
            target.update(keywords(limits))
    if limits.image_catalogue is not None:
        image_contract.apply(components, limits.image_catalogue)
    return document


async def ask_services(text: Any, image: Any, timeout_s: float = ASK_TIMEOUT_S) -> ServiceLimits:
    """The limits, from the text and image services' ListModels."""
    text_reply, presets, image_reply = await asyncio.gather(
        text.ListModels(text_pb2.ListModelsRequest(), timeout=timeout_s),
        text.ListPresets(text_pb2.ListPresetsRequest(), timeout=timeout_s),
        image.ListModels(image_pb2.ListModelsRequest(), timeout=timeout_s))
    return ServiceLimits(
        text_models=tuple(model.name for model in text_reply.models),
        max_new_tokens=text_reply.max_new_tokens, max_prompt_chars=text_reply.max_prompt_chars,
        vocab_size=min(model.vocab_size for model in text_reply.models),
        image_models=tuple(model.name for model in image_reply.models), max_steps=image_reply.max_steps,
        max_images=image_reply.max_images, presets=tuple(preset.name for preset in presets.presets),
        image_catalogue=image_reply)


class RuntimeContract:
    """Serves the app's OpenAPI document, with the services' limits once they have reported them."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._static: dict[str, Any] | None = None
        self._document: dict[str, Any] | None = None
        self.limits: ServiceLimits | None = None

    def static_document(self) -> dict[str, Any]:
        if self._static is None:
            app = self._app
            self._static = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                                       description=app.description, routes=app.routes)
        return self._static

    def openapi(self) -> dict[str, Any]:
        """What `app.openapi()` returns (FastAPI's /openapi.json and /docs call it)."""
        if self.limits is None:
            return self.static_document()
        if self._document is None:
            self._document = apply_limits(self.static_document(), self.limits)
        return self._document

    async def learn(self, text: Any, image: Any) -> None:
        """Ask the services until both have answered."""
        while self.limits is None:
            try:
                self.limits = await ask_services(text, image)
            except grpc.aio.AioRpcError as error:
                log.info("the services' limits are not known yet (%s); the OpenAPI document lacks them meanwhile",
                         error.code().name)
                await asyncio.sleep(RETRY_S)


def install(app: FastAPI) -> RuntimeContract:
    """Make `app.openapi()` the run-time document."""
    contract = RuntimeContract(app)
    app.openapi = contract.openapi  # type: ignore[method-assign]
    return contract
