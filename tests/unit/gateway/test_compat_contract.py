"""The compatible text bodies (KoboldAI, OpenAI, NovelAI) state and check the text service's ranges
under their own field names, take JSON types as their clients send them and no looser, and the
native story context states the limits the text service checks (`fabula_wire.story_context`)."""

from __future__ import annotations

import functools
import re
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from fabula_wire import story_context as limits
from fabula_wire.sampling import SAMPLING_RANGES
from gateway.errors import ApiError
from gateway.main import create_app
from gateway.schemas.compat import at_most_pattern
from gateway.schemas.kobold import GenerateBody as KoboldBody
from gateway.schemas.novelai import GenerateTextBody
from gateway.schemas.openai import ChatCompletionBody, CompletionBody
from gateway.schemas.text import GenerateBody as NativeBody
from services.text.story_context import ContextConfig, StoryContext, check_inputs
from services.toolkit.errors import InvalidArgument
from tests.unit.gateway.test_contract import probes

# (body, its component in the document, the body's own field, Fabula's sampling field).
KOBOLD_FIELDS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "top_a": "top_a",
                 "min_p": "min_p", "typical": "typical_p", "tfs": "tail_free", "rep_pen": "repetition_penalty",
                 "rep_pen_range": "repetition_penalty_range", "rep_pen_slope": "repetition_penalty_slope",
                 "presence_penalty": "presence_penalty", "mirostat": "mirostat", "mirostat_tau": "mirostat_tau",
                 "mirostat_eta": "mirostat_eta", "dry_multiplier": "dry_multiplier", "dry_base": "dry_base",
                 "dry_allowed_length": "dry_allowed_length", "dry_penalty_last_n": "dry_penalty_last_n",
                 "xtc_threshold": "xtc_threshold", "xtc_probability": "xtc_probability"}
NOVELAI_FIELDS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "top_a": "top_a",
                  "typical_p": "typical_p", "tail_free_sampling": "tail_free", "min_p": "min_p",
                  "repetition_penalty": "repetition_penalty", "repetition_penalty_range": "repetition_penalty_range",
                  "repetition_penalty_slope": "repetition_penalty_slope",
                  "repetition_penalty_frequency": "frequency_penalty",
                  "repetition_penalty_presence": "presence_penalty", "cfg_scale": "cfg_scale",
                  "unified_linear": "unified_linear", "unified_quad": "unified_quad", "unified_conf": "unified_conf",
                  "mirostat_tau": "mirostat_tau", "mirostat_lr": "mirostat_eta"}
# llama.cpp's -1 ("off", "the whole context") widens top_k, repeat_last_n and dry_penalty_last_n.
OPENAI_FIELDS = {"temperature": "temperature", "top_p": "top_p", "presence_penalty": "presence_penalty",
                 "frequency_penalty": "frequency_penalty", "min_p": "min_p", "top_a": "top_a",
                 "typical_p": "typical_p", "typical": "typical_p", "tfs": "tail_free", "tfs_z": "tail_free",
                 "tail_free": "tail_free", "repetition_penalty": "repetition_penalty",
                 "repeat_penalty": "repetition_penalty", "repetition_penalty_range": "repetition_penalty_range",
                 "repetition_penalty_slope": "repetition_penalty_slope", "mirostat": "mirostat",
                 "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta", "dry_multiplier": "dry_multiplier",
                 "dry_base": "dry_base", "dry_allowed_length": "dry_allowed_length",
                 "xtc_threshold": "xtc_threshold", "xtc_probability": "xtc_probability"}


def kobold(**fields: Any) -> dict[str, Any]:
    return {"prompt": "x", **fields}


def novelai(**fields: Any) -> dict[str, Any]:
    return {"input": "x", "parameters": fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"prompt": "x", **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "x"}], **fields}


CASES = ([(KoboldBody, "gateway__schemas__kobold__GenerateBody", kobold, (), ours, theirs)
          for ours, theirs in KOBOLD_FIELDS.items()]
         + [(GenerateTextBody, "TextParameters", novelai, ("parameters",), ours, theirs)
            for ours, theirs in NOVELAI_FIELDS.items()]
         + [(body, name, build, (), ours, theirs) for body, name, build in
            ((CompletionBody, "CompletionBody", completion), (ChatCompletionBody, "ChatCompletionBody", chat))
            for ours, theirs in OPENAI_FIELDS.items()])


@functools.cache
def document() -> dict[str, Any]:
    return create_app().openapi()


def stated(component: str, field: str) -> dict[str, Any]:
    return document()["components"]["schemas"][component]["properties"][field]


@pytest.mark.parametrize(("body", "component", "build", "where", "ours", "theirs"), CASES,
                         ids=[f"{case[1]}.{case[4]}" for case in CASES])
def test_a_compatible_field_states_and_checks_the_services_range(body: type[BaseModel], component, build, where,
                                                                  ours, theirs):
    native = stated("Sampling", theirs)
    assert stated(component, ours)["anyOf"] == native["anyOf"], (component, ours)
    validator = jsonschema.Draft202012Validator(native)
    for value in probes(SAMPLING_RANGES[theirs]):
        valid = validator.is_valid(value)
        try:
            body.model_validate(build(**{ours: value}))
        except ValidationError as error:
            assert not valid, (ours, value, error)
            assert error.errors()[0]["loc"] == (*where, ours)
        else:
            assert valid, (ours, value)


@pytest.mark.parametrize(("body", "build", "field", "value"), [
    (KoboldBody, kobold, "temperature", "0.7"), (KoboldBody, kobold, "max_length", "80"),
    (KoboldBody, kobold, "top_k", True), (KoboldBody, kobold, "singleline", 1),
    (CompletionBody, completion, "temperature", "1"), (CompletionBody, completion, "n", True),
    (CompletionBody, completion, "stream", "true"), (ChatCompletionBody, chat, "max_tokens", "16"),
    (GenerateTextBody, novelai, "temperature", "1.0"), (GenerateTextBody, novelai, "max_length", False)])
def test_a_numeric_string_or_a_boolean_is_not_taken_for_a_number(body, build, field, value):
    with pytest.raises(ValidationError):
        body.model_validate(build(**{field: value}))


def test_what_the_clients_send_is_taken():
    # SillyTavern sends 1 where a float is meant and 24.0 may reach an integer through JavaScript.
    KoboldBody.model_validate(kobold(tfs=1, top_a=0, max_length=24.0, sampler_order=[6, 0, 1, 2, 3, 4, 5]))
    CompletionBody.model_validate(completion(temperature=1, max_tokens=16, logit_bias={"50": -100}, stop="\n"))


@pytest.mark.parametrize(("body", "fields"), [
    (CompletionBody, {"echo": True}), (CompletionBody, {"suffix": "end"}), (CompletionBody, {"best_of": 2}),
    (ChatCompletionBody, {"tools": [{"type": "function"}]}),
    (ChatCompletionBody, {"response_format": {"type": "json_object"}}),
    (ChatCompletionBody, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
    (KoboldBody, {"nsigma": 1.0}), (KoboldBody, {"sampler_order": [0, 0]}),
    (KoboldBody, {"stop_sequence": ["s"] * 64}), (KoboldBody, {"logit_bias": {"01": 1}}),
    (CompletionBody, {"logit_bias": {"x": 1}})])
def test_what_the_document_does_not_allow_is_refused(body, fields):
    base, component = {KoboldBody: (kobold(), "gateway__schemas__kobold__GenerateBody"),
                       CompletionBody: (completion(), "CompletionBody"),
                       ChatCompletionBody: (chat(), "ChatCompletionBody")}[body]
    components = document()["components"]
    # The component with the document's components beside it, for its $refs.
    schema = {**components["schemas"][component], "components": components}
    request = {**base, **fields}
    assert not jsonschema.Draft202012Validator(schema).is_valid(request), request
    with pytest.raises((ValidationError, ApiError)):
        parsed = body.model_validate(request)
        if isinstance(parsed, KoboldBody):
            parsed.specs()  # the sampler order is read here
        elif isinstance(parsed, ChatCompletionBody):
            parsed.template_request()  # and the content parts here


@pytest.mark.parametrize("largest", [0, 9, 10, 99, 100, 299, 1000, 65535, 4294967295])
def test_the_token_id_pattern_allows_exactly_the_ids_up_to_the_largest(largest):
    pattern = at_most_pattern(largest)
    for value in {0, 1, 9, 10, 11, 99, 100, 101, largest + 1, largest * 10, 10 ** len(str(largest)),
                  *range(max(largest - 12, 0), largest + 1)}:
        assert bool(re.search(pattern, str(value))) == (value <= largest), (largest, value)
    assert not re.search(pattern, "01") and not re.search(pattern, "-1") and not re.search(pattern, "1.0")


@pytest.mark.parametrize(("change", "field"), [
    ({"authors_note_depth": limits.MAX_AUTHORS_NOTE_DEPTH + 1}, "authors_note_depth"),
    ({"memory": "m" * (limits.MAX_PART_CHARS + 1)}, "memory"),
    ({"story_config": {"budget_priority": limits.MAX_POSITION + 1}}, "story_config"),
    ({"memory_config": {"insertion_position": -limits.MAX_POSITION - 1}}, "memory_config"),
    ({"authors_note_config": {"prefix": "p" * (limits.MAX_AFFIX_CHARS + 1)}}, "authors_note_config"),
    ({"lorebook": [{"text": "t", "keys": ["k"] * (limits.MAX_KEYS_PER_ENTRY + 1)}]}, "lorebook"),
    ({"lorebook": [{"text": "t", "keys": ["k" * (limits.MAX_KEY_CHARS + 1)]}]}, "lorebook"),
    ({"lorebook": [{"text": "t", "always_on": True}] * (limits.MAX_LOREBOOK_ENTRIES + 1)}, "lorebook"),
    ({"lorebook_categories": [{"id": "c"}] * (limits.MAX_CATEGORIES + 1)}, "lorebook_categories")])
def test_the_native_body_refuses_a_story_context_beyond_the_services_limits(change, field):
    with pytest.raises(ValidationError) as raised:
        NativeBody.model_validate({"context": {"story": "s", **change}})
    assert raised.value.errors()[0]["loc"][:2] == ("context", field)


def test_the_story_context_limits_are_the_services():
    # At the bound the service takes what the body takes; beyond it both refuse.
    context = {"story": "s", "authors_note_depth": limits.MAX_AUTHORS_NOTE_DEPTH,
               "story_config": {"budget_priority": limits.MAX_POSITION}}
    NativeBody.model_validate({"context": context})
    check_inputs(StoryContext(story="s", authors_note_depth=limits.MAX_AUTHORS_NOTE_DEPTH,
                              story_config=ContextConfig(budget_priority=limits.MAX_POSITION)), 1000)
    with pytest.raises(InvalidArgument):
        check_inputs(StoryContext(story="s", authors_note_depth=limits.MAX_AUTHORS_NOTE_DEPTH + 1), 1000)
    with pytest.raises(InvalidArgument):
        check_inputs(StoryContext(story="s", story_config=ContextConfig(budget_priority=limits.MAX_POSITION + 1)),
                     1000)
    schemas = document()["components"]["schemas"]
    depth = [b for b in schemas["StoryContext"]["properties"]["authors_note_depth"]["anyOf"] if b["type"] != "null"]
    assert depth[0]["maximum"] == limits.MAX_AUTHORS_NOTE_DEPTH
    assert schemas["StoryContext"]["properties"]["lorebook"]["maxItems"] == limits.MAX_LOREBOOK_ENTRIES


def test_every_seed_the_document_allows_gives_n_choices_of_valid_seeds():
    largest = 2**63 - 1  # the text service's largest seed
    openai = CompletionBody.model_validate(completion(seed=largest, n=3)).specs("x", 4)
    assert [spec.seed for spec in openai] == [largest, 0, 1]
    koboldcpp = KoboldBody.model_validate(kobold(sampler_seed=largest - 1, n=3)).specs()
    assert [spec.seed for spec in koboldcpp] == [largest - 1, largest, 0]
    for body, build, field in ((CompletionBody, completion, "seed"), (KoboldBody, kobold, "sampler_seed")):
        with pytest.raises(ValidationError):
            body.model_validate(build(**{field: largest + 1}))
