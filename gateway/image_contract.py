"""The image bodies' constraints that only the image service's catalogue (ListModels) knows, written
into the OpenAPI document at run time (gateway/contract.py): the names it takes (samplers,
schedulers, checkpoints, presets, upscalers) as enums, and the relations between fields that JSON
Schema can state with `anyOf`, such as the noise schedules each sampler offers and the presets
each model has. A request valid by the document is then one the service takes in those fields.

A field left out takes the default model, and with it that model's default sampler; so the
relations are written per model, and a branch for a model other than the default one requires the
field that names it (JSON Schema's `properties` hold for an absent field too).
"""

from __future__ import annotations

from typing import Any

from fabula.image.v1 import image_pb2
from gateway.schemas import a1111, novelai

Schema = dict[str, Any]

_SCHEDULE_NAMES = {image_pb2.NOISE_SCHEDULE_NATIVE: "native", image_pb2.NOISE_SCHEDULE_KARRAS: "karras",
                   image_pb2.NOISE_SCHEDULE_EXPONENTIAL: "exponential",
                   image_pb2.NOISE_SCHEDULE_POLYEXPONENTIAL: "polyexponential"}


def _samplers(catalogue: image_pb2.ListModelsResponse) -> dict[str, image_pb2.SamplerInfo]:
    return {sampler.name: sampler for sampler in catalogue.samplers}


def _schedules(sampler: image_pb2.SamplerInfo | None) -> list[str]:
    """The noise schedules a sampler offers, by Fabula's names ("native" always)."""
    offered = {_SCHEDULE_NAMES[value] for value in sampler.noise_schedules if value in _SCHEDULE_NAMES} \
        if sampler else set()
    return [name for name in _SCHEDULE_NAMES.values() if name in offered or name == "native"]


def _optional(values: list[Any]) -> Schema:
    """One of `values`, or null (for a field that may be sent as null)."""
    return {"enum": [*values, None]}


def _model_branch(model: image_pb2.ModelInfo, names: list[str], field: str) -> Schema:
    """The part of a branch that selects `model` by `field`: its names; the default model also
    when the field is left out or empty."""
    if model.is_default:
        return {"properties": {field: {"enum": ["", *names]}}}
    return {"properties": {field: {"enum": names}}, "required": [field]}


def _relation(schema: Schema, branches: list[Schema]) -> None:
    """Add "one of these branches holds" to the body's other constraints."""
    schema.setdefault("allOf", []).append({"anyOf": branches})


# Fabula's own body (/ai/generate-image, /ai/generate-image-stream) --------------------------------


def native_body(schema: Schema, catalogue: image_pb2.ListModelsResponse) -> None:
    """model, negative_preset, sampler and noise_schedule: per model, its presets; per sampler (or
    the model's default one), its schedules. Samplers that offer the same schedules share a
    branch, and the relation stays few branches (it multiplies with the actions')."""
    samplers = _samplers(catalogue)
    properties = schema["properties"]
    properties["sampler"] = {**properties["sampler"], "enum": ["", *samplers]}
    properties["negative_preset"] = {
        **properties["negative_preset"],
        "enum": ["", *dict.fromkeys(p.name for m in catalogue.models for p in m.negative_presets)]}
    branches = []
    for model in catalogue.models:
        selected = _model_branch(model, [model.name], "model")
        presets = {"negative_preset": {"enum": ["", *(p.name for p in model.negative_presets)]}}
        by_schedules: dict[tuple[str, ...], list[str]] = {}
        for name, sampler in samplers.items():
            by_schedules.setdefault(tuple(_schedules(sampler)), []).append(name)
        default = tuple(_schedules(samplers.get(model.default_sampler)))
        by_schedules.setdefault(default, [])
        for schedules, names in by_schedules.items():
            # The model's default sampler stands for "" and a sampler left out.
            named = {"sampler": {"enum": ["", *names] if schedules == default else names}}
            required = [*selected.get("required", []), *(() if schedules == default else ("sampler",))]
            branches.append({"properties": {**selected["properties"], **presets, **named,
                                            "noise_schedule": _optional(list(schedules))},
                             "required": required})
    _relation(schema, branches)


def guidance_lists(schema: Schema, catalogue: image_pb2.ListModelsResponse) -> None:
    """The most references, controls and characters one request may carry."""
    for name, most in (("references", catalogue.max_references), ("controls", catalogue.max_controls),
                       ("characters", catalogue.max_characters)):
        schema["properties"][name] = {**schema["properties"][name], "maxItems": most}


def hires_body(schema: Schema, catalogue: image_pb2.ListModelsResponse) -> None:
    schema["properties"]["upscaler"] = {**schema["properties"]["upscaler"],
                                        "enum": ["", "latent", *catalogue.upscalers]}


def upscaler_field(schema: Schema, catalogue: image_pb2.ListModelsResponse) -> None:
    """upscale and enhance take "" (Lanczos) or one of the service's upscalers; the other actions
    do not use the field. Written into those actions' branches of the body's static relation
    (one branch per action, schemas/image.py)."""
    for relation in schema.get("allOf", []):
        for branch in relation.get("anyOf", []):
            actions = branch.get("properties", {}).get("action", {}).get("enum", [])
            if "upscale" in actions or "enhance" in actions:
                branch["properties"]["upscaler"] = {"enum": ["", *catalogue.upscalers]}


# AUTOMATIC1111 (/sdapi/v1/txt2img, /sdapi/v1/img2img) -------------------------------------------


def a1111_body(schema: Schema, catalogue: image_pb2.ListModelsResponse) -> None:
    """sampler_name (or sampler_index) from /sdapi/v1/samplers' table, scheduler, the checkpoint
    in override_settings and hr_upscaler as enums; per sampler (or, when neither names one, the
    checkpoint's default sampler), the schedulers it offers."""
    table = a1111.Catalogue(catalogue)
    names = table.sampler_names()
    properties = schema["properties"]
    for field in ("sampler_name", "sampler_index"):
        properties[field] = {**properties[field], "anyOf": [{"enum": ["", *names]}, {"type": "null"}]}
    properties["scheduler"] = {**properties["scheduler"], "enum": list(a1111.SCHEDULERS)}
    if "hr_upscaler" in properties:  # txt2img's hires fix
        properties["hr_upscaler"] = {**properties["hr_upscaler"], "enum": list(table.hires_upscalers())}
    checkpoints = table.checkpoints()
    settings = properties["override_settings"]
    settings["properties"] = {"sd_model_checkpoint": {"type": "string", "enum": ["", *checkpoints]}}

    samplers = _samplers(catalogue)

    def schedulers(sampler: image_pb2.SamplerInfo | None) -> Schema:
        offered = {image_pb2.NOISE_SCHEDULE_UNSPECIFIED, *(sampler.noise_schedules if sampler else ())}
        return {"enum": [spelling for spelling, value in a1111.SCHEDULERS.items() if value in offered]}

    unnamed = {"enum": ["", None]}
    branches = []
    for field in ("sampler_name", "sampler_index"):
        for sampler in samplers.values():
            spellings = [spelling for spelling, (name, _) in names.items() if name == sampler.name]
            before = {"sampler_name": unnamed} if field == "sampler_index" else {}
            branches.append({"properties": {**before, field: {"enum": spellings}, "scheduler": schedulers(sampler)},
                             "required": [field]})
    for model in catalogue.models:
        spellings = [spelling for spelling, name in checkpoints.items() if name == model.name]
        chosen = _model_branch(model, spellings, "sd_model_checkpoint")
        checkpoint: Schema = {"properties": {"override_settings": chosen}}
        if not model.is_default:
            checkpoint["required"] = ["override_settings"]
        branches.append({"properties": {"sampler_name": unnamed, "sampler_index": unnamed,
                                        "scheduler": schedulers(samplers.get(model.default_sampler)),
                                        **checkpoint["properties"]},
                         "required": checkpoint.get("required", [])})
    _relation(schema, branches)


# NovelAI (/novelai/ai/generate-image) -----------------------------------------------------------


def novelai_body(schema: Schema, catalogue: image_pb2.ListModelsResponse) -> None:
    """Per model (a Fabula model named, else the default one), the presets ucPreset can name and
    the noise schedules of the sampler used. The parameters are a component of their own, so the
    relation is written on the body: model and parameters together."""
    samplers = _samplers(catalogue)
    named = [model.name for model in catalogue.models]
    branches = []
    for model in catalogue.models:
        others = [name for name in named if name != model.name]
        if not model.is_default:
            chosen: Schema = {"properties": {"model": {"const": model.name}}, "required": ["model"]}
        else:  # any other name (NovelAI's own, an unknown one) takes the default model
            chosen = {"properties": {"model": {"not": {"enum": others}}}} if others else {"properties": {}}
        presets = {p.name for p in model.negative_presets}
        presets_named = [number for number, preset in novelai.UC_PRESETS.items() if preset in presets]
        choices = [({"sampler": {"type": "null"}}, samplers.get(model.default_sampler), [])]
        choices += [({"sampler": {"enum": [theirs for theirs, ours in novelai.SAMPLERS.items() if ours == name]}},
                     sampler, ["sampler"]) for name, sampler in samplers.items()
                    if name in novelai.SAMPLERS.values()]
        for sampler_field, sampler, required in choices:
            allowed = [name for name in _schedules(sampler) if name in novelai.SCHEDULES]
            parameters = {"properties": {**sampler_field, "ucPreset": {"enum": presets_named},
                                         "noise_schedule": _optional(allowed)},
                          "required": required}
            branches.append({"properties": {**chosen["properties"], "parameters": parameters},
                             "required": chosen.get("required", [])})
    _relation(schema, branches)


# Which component each rule writes into (FastAPI's names for the models).
RUNTIME_SCHEMAS = (
    ("gateway__schemas__image__GenerateImageBody", upscaler_field),
    ("gateway__schemas__image__GenerateImageBody", native_body),
    ("gateway__schemas__image__GenerateImageBody", guidance_lists),
    ("HiresBody", hires_body),
    ("Txt2ImgBody", a1111_body),
    ("Img2ImgBody", a1111_body),
    ("gateway__schemas__novelai__GenerateImageBody", novelai_body),
)


def apply(components: dict[str, Schema], catalogue: image_pb2.ListModelsResponse) -> None:
    for component, rule in RUNTIME_SCHEMAS:
        if component not in components:
            raise LookupError(f"the OpenAPI document has no {component} to constrain")
        rule(components[component], catalogue)
