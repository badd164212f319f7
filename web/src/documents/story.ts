// The story object (docs/formats.md, section 3; sdk/fabula_sdk/documents/story.py): the library
// entry, kept as its JSON so that fields this editor does not know survive a save.
import { DocumentError, Float, NewerFormatError, type Json } from "./json";

export const STORY_VERSION = 2;
export const PREVIEW_CHARS = 280;
export type StoryJson = { [key: string]: Json };

type Config = { [key: string]: Json };
const NEUTRAL: Config = {
  prefix: "", suffix: "", token_budget: 0, reserved_tokens: 0, budget_priority: 0, trim_direction: "bottom",
  maximum_trim_type: "sentence", insertion_type: "newline", insertion_position: -1,
};
const part = (changes: Config): Config => ({ ...NEUTRAL, ...changes });
export const PART_DEFAULTS: Record<string, Config> = {
  story_config: part({ reserved_tokens: 512, trim_direction: "top" }),
  memory: part({ budget_priority: 800, insertion_position: 0 }),
  authors_note: part({ budget_priority: -400, insertion_position: -4 }),
};

const SAMPLING_NAMES = ["temperature", "top_k", "top_p", "top_a", "typical_p", "tail_free", "min_p", "repetition_penalty",
  "repetition_penalty_range", "repetition_penalty_slope", "frequency_penalty", "presence_penalty", "repetition_penalty_whitelist"];

function defaultSettings(): StoryJson {
  return {
    text_model: "", preset_id: "", service_preset: "",
    sampling: Object.fromEntries(SAMPLING_NAMES.map((name) => [name, null])),
    sampler_order: [], max_new_tokens: null, min_new_tokens: null, stop_sequences: [], banned_strings: [],
    logit_bias: [], phrase_bias: [],
    image: { model: "", prompt: "", negative_prompt: "", negative_preset: "", quality_tags: true, width: 512, height: 512,
      steps: 28, sampler: "", guidance_scale: null, guidance_rescale: new Float(0), seed: null },
  };
}

export function defaultStory(contentId: string): StoryJson {
  return {
    format: "fabula-story", version: STORY_VERSION, content_id: contentId, title: "", description: "", tags: [],
    favorite: false, created_at: "", updated_at: "", preview: "", lorebook_ids: [], history_segments: 0,
    memory: { text: "", context_config: { ...PART_DEFAULTS.memory } },
    authors_note: { text: "", context_config: { ...PART_DEFAULTS.authors_note } },
    story_config: { ...PART_DEFAULTS.story_config },
    settings: defaultSettings(),
  };
}

const isObject = (v: Json | undefined): v is { [key: string]: Json } => typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Float);

/** Fields absent from `data` take `defaults`' values, recursively into nested objects. */
function fill(data: StoryJson, defaults: StoryJson): StoryJson {
  const out: StoryJson = { ...data };
  for (const [key, value] of Object.entries(defaults)) {
    if (!(key in out)) out[key] = value;
    else if (isObject(out[key]) && isObject(value)) out[key] = fill(out[key] as StoryJson, value as StoryJson);
  }
  return out;
}

function fillConfig(value: Json | undefined, partName: string): Json {
  return isObject(value) ? { ...NEUTRAL, ...value } : { ...PART_DEFAULTS[partName] };
}

/** A story as read (version 1 or 2, or newer: read, never written), every field present. */
export function readStory(data: Json, what: string): { story: StoryJson; newer: boolean } {
  if (!isObject(data)) throw new DocumentError(`${what}: must be a JSON object`);
  let raw: StoryJson = data;
  if (!("format" in raw) && raw.version === 1) {
    for (const key of ["title", "content_id"]) {
      if (typeof raw[key] !== "string") throw new DocumentError(`${what}.${key}: a version-1 story needs the text field ${key}`);
    }
    const updated = typeof raw.updated_at === "string" ? raw.updated_at : "";
    raw = { ...raw, format: "fabula-story", version: STORY_VERSION, created_at: updated, updated_at: updated };
  }
  if (raw.format !== "fabula-story") throw new DocumentError(`${what}.format: must be "fabula-story"`);
  if (!Number.isInteger(raw.version)) throw new DocumentError(`${what}.version: must be an integer`);
  if (typeof raw.content_id !== "string" || !raw.content_id) throw new DocumentError(`${what}.content_id: must be a non-empty string`);
  const story = fill(raw, defaultStory(raw.content_id));
  for (const name of ["memory", "authors_note"]) {
    const entry = isObject(raw[name]) ? (raw[name] as StoryJson) : {};
    story[name] = { ...(story[name] as StoryJson), context_config: fillConfig(entry.context_config, name) };
  }
  story.story_config = fillConfig(raw.story_config, "story_config");
  for (const key of ["title", "description", "preview", "created_at", "updated_at"]) {
    if (typeof story[key] !== "string") throw new DocumentError(`${what}.${key}: must be a string`);
  }
  if (!Array.isArray(story.tags) || !story.tags.every((t) => typeof t === "string")) throw new DocumentError(`${what}.tags: must be a list of strings`);
  if (typeof story.favorite !== "boolean") throw new DocumentError(`${what}.favorite: must be a boolean`);
  if (!Number.isInteger(story.history_segments) || (story.history_segments as number) < 0) {
    throw new DocumentError(`${what}.history_segments: must be an integer >= 0`);
  }
  return { story, newer: (story.version as number) > STORY_VERSION };
}

export function checkWritable(story: StoryJson, newer: boolean, what: string): void {
  if (newer) {
    throw new NewerFormatError(`${what} is format version ${story.version}, newer than the version ${STORY_VERSION} this ` +
      "editor writes: it can be read but not saved (update the editor)");
  }
}

export function preview(text: string): string {
  return Array.from(text).slice(0, PREVIEW_CHARS).join("");
}

/** RFC 3339 UTC with a Z and milliseconds, as the SDK writes. */
export function utcNow(): string {
  return new Date().toISOString();
}

export const str = (story: StoryJson, key: string): string => (typeof story[key] === "string" ? (story[key] as string) : "");
export const tags = (story: StoryJson): string[] => (Array.isArray(story.tags) ? (story.tags as string[]) : []);
