// What the side panels edit, as the SDK stores it (docs/formats.md, sections 3 and 6): the
// story's memory, author's note and settings live in the story object; lorebooks are their own
// `lorebooks` objects, listed in the story's `lorebook_ids`. The generation request is built the
// way sdk/fabula_sdk/documents/request.py builds it, so the browser and the SDK send the same.
import type { Vault } from "../api/vault";
import { canonicalJson, clone, DocumentError, Float, parseJson, toPlain, type Json } from "../documents/json";
import type { StoryDoc } from "../documents/store";
import { newId } from "../documents/store";
import type { StoryJson } from "../documents/story";

export const DEFAULT_LENGTH = 40;

/** The lorebook entry's (and category sub-context's) ContextConfig defaults (formats.md, section 3). */
export function entryConfig(): StoryJson {
  return { prefix: "", suffix: "", token_budget: 0, reserved_tokens: 0, budget_priority: 400, trim_direction: "bottom",
    maximum_trim_type: "sentence", insertion_type: "newline", insertion_position: -1 };
}

export function newEntry(fields: StoryJson = {}): StoryJson {
  return { id: newId(), name: "", text: "", keys: [], regex_keys: false, case_sensitive: false, scan_depth_chars: 0,
    always_on: false, disabled: false, key_relative: false, cascading_activation: false, category: "",
    context_config: entryConfig(), ...fields };
}

export function newCategory(name: string): StoryJson {
  const defaults = newEntry({ id: "" });
  return { id: newId(), name, enabled: true, create_subcontext: false, subcontext_config: entryConfig(),
    use_category_defaults: false, category_defaults: defaults };
}

export interface LorebookDoc {
  id: string;
  book: StoryJson;
  changeIndex: number;
}

const isObject = (v: Json | undefined): v is StoryJson => typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Float);

/** A lorebook as read: every field present (unknown fields kept). */
export function readLorebook(data: Json, what: string): StoryJson {
  if (!isObject(data)) throw new DocumentError(`${what}: must be a JSON object`);
  if (data.format !== "fabula-lorebook") throw new DocumentError(`${what}.format: must be "fabula-lorebook"`);
  const book: StoryJson = { name: "", description: "", entries: [], categories: [], ...data };
  if (!Array.isArray(book.entries)) throw new DocumentError(`${what}.entries: must be a list`);
  if (!Array.isArray(book.categories)) throw new DocumentError(`${what}.categories: must be a list`);
  book.entries = (book.entries as Json[]).map((e, i) => {
    if (!isObject(e)) throw new DocumentError(`${what}.entries[${i}]: must be an object`);
    const entry = { ...newEntry({ id: "" }), ...e };
    entry.context_config = { ...entryConfig(), ...(isObject(e.context_config) ? e.context_config : {}) };
    return entry;
  });
  book.categories = (book.categories as Json[]).map((c, i) => {
    if (!isObject(c)) throw new DocumentError(`${what}.categories[${i}]: must be an object`);
    const category = { ...newCategory(""), ...c };
    category.subcontext_config = { ...entryConfig(), ...(isObject(c.subcontext_config) ? c.subcontext_config : {}) };
    return category;
  });
  return book;
}

export async function openLorebooks(vault: Vault, story: StoryJson): Promise<LorebookDoc[]> {
  const ids = Array.isArray(story.lorebook_ids) ? (story.lorebook_ids as string[]) : [];
  return Promise.all(ids.map(async (id) => {
    const stored = await vault.getText("lorebooks", id);
    return { id, book: readLorebook(parseJson(stored.text), `lorebooks/${id}`), changeIndex: stored.changeIndex };
  }));
}

/** A new lorebook for the story, stored (its key first) before the story lists it. */
export async function createLorebook(vault: Vault, name: string): Promise<LorebookDoc> {
  const id = newId();
  await vault.ensureKeys([{ type: "lorebooks", id }]);
  const book: StoryJson = { format: "fabula-lorebook", version: 2, name, description: "", entries: [], categories: [] };
  const meta = await vault.put("lorebooks", id, canonicalJson(book), 0);
  return { id, book, changeIndex: meta.changeIndex };
}

export async function saveLorebook(vault: Vault, doc: LorebookDoc): Promise<void> {
  const meta = await vault.put("lorebooks", doc.id, canonicalJson(doc.book), doc.changeIndex);
  doc.changeIndex = meta.changeIndex;
}

// --- "test this entry against the story" -------------------------------------------------------

export interface KeyMatch {
  key: string;
  error: string;
  /** Where the key matched in the story text (code-unit offsets into the searched range's text). */
  matches: { index: number; text: string }[];
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Which keys of `entry` match `story`, and where: the same rules as the text service's lorebook
 * (services/text/story_context.py): plain keys are substrings, regex keys regular expressions,
 * case-insensitive unless `case_sensitive`, within the last `scan_depth_chars` characters. */
export function testEntry(entry: StoryJson, story: string): { active: boolean; why: string; keys: KeyMatch[]; searched: string } {
  const depth = Number(entry.scan_depth_chars ?? 0);
  const chars = Array.from(story);
  const searched = depth > 0 && chars.length > depth ? chars.slice(chars.length - depth).join("") : story;
  const flags = entry.case_sensitive ? "g" : "gi";
  const keys = ((entry.keys as string[]) ?? []).map((key) => {
    const result: KeyMatch = { key, error: "", matches: [] };
    let pattern: RegExp;
    try {
      pattern = new RegExp(entry.regex_keys ? key : escapeRegExp(key), flags);
    } catch (e: any) {
      result.error = `not a valid regular expression: ${e?.message ?? e}`;
      return result;
    }
    if (!key) return result;
    for (const m of searched.matchAll(pattern)) {
      if (m[0] === "") break;
      result.matches.push({ index: m.index ?? 0, text: m[0] });
      if (result.matches.length >= 20) break;
    }
    return result;
  });
  const matched = keys.filter((k) => k.matches.length);
  let active = false, why: string;
  if (entry.disabled) why = "disabled: never inserted";
  else if (entry.always_on) { active = true; why = "always on"; }
  else if (matched.length) { active = true; why = `key${matched.length > 1 ? "s" : ""} ${matched.map((k) => `"${k.key}"`).join(", ")} found`; }
  else if (!keys.length) why = "no keys: never activated by the story";
  else why = depth > 0 ? `no key found in the last ${depth} characters` : "no key found in the story";
  return { active, why, keys, searched };
}

// --- the generation request -----------------------------------------------------------------------

/** The text service's default step order (services/text/params.py, DEFAULT_ORDER). */
export const DEFAULT_ORDER = ["repetition_penalty", "phrase_repetition_penalty", "dry", "temperature", "unified", "top_k", "top_a",
  "top_p", "typical_p", "tail_free", "min_p", "xtc", "mirostat"];

/** An entry with no key that is not always on can never be inserted, and the text service refuses
 * one (an entry being written in the panel), so it is left out of the request. */
function canActivate(entry: StoryJson): boolean {
  return Boolean(entry.always_on) || Boolean(entry.disabled) || ((entry.keys as string[]) ?? []).some((k) => k !== "");
}

function entryForRequest(entry: StoryJson): Json {
  const keys = ((entry.keys as string[]) ?? []).filter((k) => k !== "");
  const { id, name, text, regex_keys, case_sensitive, scan_depth_chars, always_on, disabled, key_relative,
    cascading_activation, category, context_config } = entry;
  return toPlain({ id, name, text, keys, regex_keys, case_sensitive, scan_depth_chars, always_on, disabled, key_relative,
    cascading_activation, category, context_config: configForRequest(context_config) } as Json) as Json;
}

const CONFIG_FIELDS = ["prefix", "suffix", "token_budget", "reserved_tokens", "budget_priority", "trim_direction",
  "maximum_trim_type", "insertion_type", "insertion_position"];

function configForRequest(config: Json | undefined): Json {
  if (!isObject(config)) return null;
  return toPlain(Object.fromEntries(CONFIG_FIELDS.filter((k) => k in config).map((k) => [k, config[k]])) as Json) as Json;
}

function categoryForRequest(category: StoryJson): Json {
  return { id: category.id, name: category.name, enabled: category.enabled, create_subcontext: category.create_subcontext,
    subcontext_config: configForRequest(category.subcontext_config), use_category_defaults: category.use_category_defaults,
    category_defaults: isObject(category.category_defaults) ? entryForRequest(category.category_defaults) : null } as Json;
}

/** The generation request for the story at its head (POST /ai/generate-stream, docs/text.md). */
export function generationBody(doc: StoryDoc, storyText: string, lorebooks: LorebookDoc[] = []): unknown {
  const story = doc.story as any;
  const settings = story.settings ?? {};
  const sampling: Record<string, Json> = Object.fromEntries(
    Object.entries(settings.sampling ?? {}).filter(([, v]) => v !== null)) as Record<string, Json>;
  if (Array.isArray(settings.sampler_order) && settings.sampler_order.length) sampling.sampler_order = clone(settings.sampler_order);
  const body: Record<string, unknown> = {
    model: settings.text_model ?? "",
    preset: settings.service_preset ?? "",
    context: {
      story: storyText,
      memory: story.memory?.text ?? "",
      authors_note: story.authors_note?.text ?? "",
      memory_config: configForRequest(story.memory?.context_config),
      authors_note_config: configForRequest(story.authors_note?.context_config),
      story_config: configForRequest(story.story_config),
      lorebook: lorebooks.flatMap((l) => (l.book.entries as StoryJson[]).filter(canActivate).map(entryForRequest)),
      lorebook_categories: lorebooks.flatMap((l) => (l.book.categories as StoryJson[]).map(categoryForRequest)),
    },
    ...(Object.keys(sampling).length ? { sampling: toPlain(sampling as Json) } : {}),
    max_new_tokens: settings.max_new_tokens ?? DEFAULT_LENGTH,
    ...(settings.min_new_tokens !== null && settings.min_new_tokens !== undefined ? { min_new_tokens: settings.min_new_tokens } : {}),
    stop_sequences: settings.stop_sequences ?? [],
    banned_strings: settings.banned_strings ?? [],
  };
  if (typeof settings.seed === "number") body.seed = settings.seed;
  return body;
}
