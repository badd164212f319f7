"""A generation request built from a story's documents is what the gateway takes: the same
names, the preset under the story's overrides, unknown document fields left out."""

from __future__ import annotations

from fabula_sdk.documents import Lorebook, LorebookCategory, LorebookEntry, Preset, SamplerName, SamplerStep, Sampling
from fabula_sdk.documents import Story, StorySettings
from fabula_sdk.documents.request import generation_request
from gateway.routes.text import GenerateBody


def _documents():
    story = Story(content_id="c", settings=StorySettings(text_model="tiny", sampling=Sampling(temperature=0.5),
                                                         stop_sequences=["\n\n"], max_new_tokens=30))
    story.memory.text = "Mara keeps the lighthouse."
    story.authors_note.text = "[ Gothic. ]"
    category = LorebookCategory(id="places", name="Places", create_subcontext=True)
    entry = category.new_entry(name="Rock", text="Gull Rock is bare.", keys=["rock"])
    entry.extra["sticky"] = 3  # another client's field: kept in the document, not sent
    lorebook = Lorebook(name="Coast", entries=[entry, LorebookEntry(name="Mara", text="Mara fears the sea.",
                                                                     keys=["Mara"], always_on=True)],
                        categories=[category])
    preset = Preset(name="Calm", sampling=Sampling(temperature=0.9, top_p=0.9),
                    sampler_order=[SamplerStep(SamplerName.TOP_P), SamplerStep(SamplerName.TEMPERATURE)],
                    max_new_tokens=80)
    return story, lorebook, preset


def test_the_request_merges_the_preset_under_the_story():
    story, lorebook, preset = _documents()
    body = generation_request(story, "The keeper climbed.", [lorebook], preset, seed=5)
    assert body["sampling"]["temperature"] == 0.5 and body["sampling"]["top_p"] == 0.9
    assert [step["sampler"] for step in body["sampling"]["sampler_order"]] == ["top_p", "temperature"]
    assert body["max_new_tokens"] == 30 and body["model"] == "tiny" and body["seed"] == 5
    assert body["context"]["memory_config"]["budget_priority"] == 800
    assert body["context"]["lorebook"][0]["category"] == "places"
    assert "sticky" not in body["context"]["lorebook"][0]


def test_the_gateway_accepts_the_request_as_built():
    story, lorebook, preset = _documents()
    request = GenerateBody.model_validate(generation_request(story, "The keeper climbed.", [lorebook], preset))
    message = request.context.to_pb()
    assert message.memory == "Mara keeps the lighthouse." and len(message.lorebook) == 2
    assert message.lorebook_categories[0].create_subcontext
    assert message.memory_config.budget_priority == 800
    assert request.sampling.to_pb().temperature == 0.5
