// NovelAI's `.lorebook` and `.scenario` files as Fabula documents: the SDK's importers/novelai.py
// line by line (the mapping is the table in docs/formats.md, section 12), so a file imported here
// and by the SDK gives the same documents. Fields with no Fabula counterpart are kept under
// `novelai`; placeholders (`${name}`) stay in the text as written.
import type { Vault } from "../api/vault";
import type { ObjectType } from "../crypto/keystore";
import { canonicalJson, clone, type Json } from "../documents/json";
import { newId, StoryStore } from "../documents/store";
import { defaultStory, type StoryJson } from "../documents/story";
import type { ImportOutcome } from "./importer";
import { stem } from "./importer";
import { ImportRefused, MAX_NAME_CHARS, MAX_STORY_TEXT_CHARS } from "./limits";
import { loadJson, MAX_CATEGORIES, MAX_ENTRIES, Reader } from "./reader";
import { checkRegex } from "./regex";

type Obj = { [key: string]: Json };

// NovelAI writes budgets and reservations at or below 1 as a share of the model's context; Fabula
// counts tokens, so a share is converted at this context size (NovelAI's largest common one).
const ASSUMED_CONTEXT_TOKENS = 8192;
const TRIM: Record<string, string> = { trimTop: "top", trimBottom: "bottom", doNotTrim: "none" };
const UNIT: Record<string, string> = { newline: "newline", sentence: "sentence", token: "token" };
const REGEX_KEY = /^\/([\s\S]+)\/([a-z]*)$/;
const SAMPLERS: Record<string, string> = { temperature: "temperature", top_k: "top_k", top_p: "top_p", top_a: "top_a",
  typical_p: "typical_p", tfs: "tail_free", tail_free_sampling: "tail_free", min_p: "min_p" };
const SAMPLER_NAMES = ["temperature", "top_k", "top_p", "top_a", "typical_p", "tail_free", "min_p"];
const PARAMETERS: Record<string, string> = { temperature: "temperature", top_k: "top_k", top_p: "top_p", top_a: "top_a",
  typical_p: "typical_p", tail_free_sampling: "tail_free", min_p: "min_p", repetition_penalty: "repetition_penalty",
  repetition_penalty_range: "repetition_penalty_range", repetition_penalty_slope: "repetition_penalty_slope",
  repetition_penalty_frequency: "frequency_penalty", repetition_penalty_presence: "presence_penalty" };
const INTEGER_PARAMETERS = ["top_k", "repetition_penalty_range"];
const SAMPLING_FIELDS = ["temperature", "top_k", "top_p", "top_a", "typical_p", "tail_free", "min_p", "repetition_penalty",
  "repetition_penalty_range", "repetition_penalty_slope", "frequency_penalty", "presence_penalty", "repetition_penalty_whitelist"];
const ENTRY_FIELDS = ["text", "contextConfig", "displayName", "id", "keys", "searchRange", "enabled", "forceActivation",
  "keyRelative", "nonStoryActivatable", "category"];
const CATEGORY_FIELDS = ["name", "id", "enabled", "createSubcontext", "subcontextSettings", "useCategoryDefaults", "categoryDefaults"];

const config = (changes: Obj): Obj => ({ prefix: "", suffix: "", token_budget: 0, reserved_tokens: 0, budget_priority: 0,
  trim_direction: "bottom", maximum_trim_type: "sentence", insertion_type: "newline", insertion_position: -1, ...changes });
const storyConfig = () => config({ reserved_tokens: 512, trim_direction: "top" });
const memoryConfig = () => config({ budget_priority: 800, insertion_position: 0 });
const authorsNoteConfig = () => config({ budget_priority: -400, insertion_position: -4 });
const entryConfig = () => config({ budget_priority: 400 });
const newEntryId = () => crypto.randomUUID().replace(/-/g, "");

const cpPrefixFree = (s: string) => s.trim();

/** Python's round(): halves go to the even neighbour. */
function pyRound(x: number): number {
  const floor = Math.floor(x), diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Python's re.escape (3.7+): the characters with a meaning in a pattern, backslashed. */
const pyEscape = (text: string) => text.replace(/[()[\]{}?*+\-|^$\\.&~# \t\n\r\v\f]/g, "\\$&");

function tokens(reader: Reader, key: string, fallback: Json, whole: number): Json {
  const value = reader.number(key, null, 0, 2 ** 31 - 1);
  if (value === null) return fallback;
  const n = Number(value);
  if (n > 0 && n <= 1) return n === 1 ? whole : Math.max(1, pyRound(n * ASSUMED_CONTEXT_TOKENS));
  if (!Number.isInteger(n)) throw new ImportRefused(reader.at(key), `must be a whole number of tokens or a share up to 1, not ${n}`);
  return n;
}

export function contextConfig(reader: Reader | null, defaults: Obj): Obj {
  const out: Obj = { ...defaults };
  if (!reader) return out;
  out.prefix = reader.string("prefix", out.prefix as string);
  out.suffix = reader.string("suffix", out.suffix as string);
  // A budget of the whole context is Fabula's "no limit" (0).
  out.token_budget = tokens(reader, "tokenBudget", out.token_budget, 0);
  out.reserved_tokens = tokens(reader, "reservedTokens", out.reserved_tokens, ASSUMED_CONTEXT_TOKENS);
  out.budget_priority = reader.integer("budgetPriority", out.budget_priority as number);
  for (const [key, table, name] of [["trimDirection", TRIM, "trim_direction"], ["maximumTrimType", UNIT, "maximum_trim_type"],
    ["insertionType", UNIT, "insertion_type"]] as [string, Record<string, string>, string][]) {
    const value = reader.string(key, "");
    if (value) {
      if (!(value in table)) throw new ImportRefused(reader.at(key), `must be one of ${Object.keys(table).join(", ")}, not '${value}'`);
      out[name] = table[value];
    }
  }
  out.insertion_position = reader.integer("insertionPosition", out.insertion_position as number);
  const rest = reader.rest(["prefix", "suffix", "tokenBudget", "reservedTokens", "budgetPriority", "trimDirection",
    "maximumTrimType", "insertionType", "insertionPosition"]);
  if (Object.keys(rest).length) out.novelai = rest;
  return out;
}

async function keys(reader: Reader, path: string): Promise<[string[], boolean, boolean]> {
  const raw = reader.strings("keys");
  const parsed: [string, boolean, boolean][] = [];
  for (const [index, key] of raw.entries()) {
    const match = REGEX_KEY.exec(key);
    if (match) {
      const [, pattern, flags] = match;
      await checkRegex(pattern, `${path}.keys[${index}]`, !flags.includes("i"));
      parsed.push([pattern, true, !flags.includes("i")]);
    } else parsed.push([key, false, false]);
  }
  if (!parsed.some(([, isRegex]) => isRegex)) return [raw, false, false];
  if (parsed.every(([, isRegex]) => isRegex) && new Set(parsed.map(([, , s]) => s)).size === 1) {
    return [parsed.map(([p]) => p), true, parsed[0][2]];
  }
  return [parsed.map(([text, isRegex, sensitive]) => {
    const pattern = isRegex ? text : pyEscape(text);
    return sensitive ? `(?-i:${pattern})` : pattern;
  }), true, false];
}

async function lorebookEntry(reader: Reader, categories: Set<string>): Promise<Obj> {
  const path = reader.path;
  const [entryKeys, regexKeys, caseSensitive] = await keys(reader, path);
  const category = reader.string("category", "", MAX_NAME_CHARS);
  if (category && !categories.has(category)) throw new ImportRefused(reader.at("category"), `names the category '${category}', which the lorebook lacks`);
  const entry: Obj = {
    id: reader.string("id", "", MAX_NAME_CHARS) || newEntryId(),
    name: reader.string("displayName", "", MAX_NAME_CHARS),
    text: reader.string("text"),
    keys: entryKeys, regex_keys: regexKeys, case_sensitive: caseSensitive,
    scan_depth_chars: reader.integer("searchRange", 0, 0),
    always_on: reader.boolean("forceActivation"),
    disabled: !reader.boolean("enabled", true),
    key_relative: reader.boolean("keyRelative"),
    cascading_activation: reader.boolean("nonStoryActivatable"),
    category,
    context_config: contextConfig(reader.child("contextConfig"), entryConfig()),
  };
  const rest = reader.rest(ENTRY_FIELDS);
  if (Object.keys(rest).length) entry.novelai = rest;
  return entry;
}

function emptyEntry(): Obj {
  return { id: "", name: "", text: "", keys: [], regex_keys: false, case_sensitive: false, scan_depth_chars: 0, always_on: false,
    disabled: false, key_relative: false, cascading_activation: false, category: "", context_config: entryConfig() };
}

export async function lorebookFromJson(data: Json | undefined, name: string, path = ""): Promise<Obj> {
  const reader = new Reader(data, path);
  if (reader.has("lorebookVersion")) reader.integer("lorebookVersion", null, 1, 1000);
  const rawCategories = reader.items("categories", MAX_CATEGORIES);
  const categoryIds = rawCategories.map((raw, index) =>
    new Reader(raw, `${reader.at("categories")}[${index}]`).string("id", "", MAX_NAME_CHARS) || `category-${index}`);
  const seen = new Map<string, number>();
  categoryIds.forEach((id, index) => {
    if (seen.has(id)) throw new ImportRefused(`${reader.at("categories")}[${index}].id`, `repeats the id of categories[${seen.get(id)}]`);
    seen.set(id, index);
  });
  const known = new Set(categoryIds);
  const categories: Obj[] = [];
  for (const [index, raw] of rawCategories.entries()) {
    categories.push(await category(new Reader(raw, `${reader.at("categories")}[${index}]`), categoryIds[index], known));
  }
  const entries: Obj[] = [];
  for (const [index, raw] of reader.items("entries", MAX_ENTRIES).entries()) {
    entries.push(await lorebookEntry(new Reader(raw, `${reader.at("entries")}[${index}]`), known));
  }
  const ids = new Map<string, number>();
  entries.forEach((entry, index) => {
    const id = entry.id as string;
    if (ids.has(id)) throw new ImportRefused(`${reader.at("entries")}[${index}].id`, `repeats the id of entries[${ids.get(id)}]`);
    ids.set(id, index);
  });
  const lorebook: Obj = { format: "fabula-lorebook", version: 2, name, description: "", entries, categories };
  const rest = reader.rest(["lorebookVersion", "entries", "categories"]);
  if (Object.keys(rest).length) lorebook.novelai = rest;
  return lorebook;
}

async function category(reader: Reader, id: string, known: Set<string>): Promise<Obj> {
  const templates: Record<string, Reader> = {};
  for (const key of ["subcontextSettings", "categoryDefaults"]) {
    const child = reader.child(key);
    if (child) {
      const named = child.string("category", "", MAX_NAME_CHARS);
      if (named && named !== id) {
        throw new ImportRefused(child.at("category"), `names the category '${named}': a category's ${key} may only name the category itself (categories do not nest)`);
      }
      templates[key] = child;
    }
  }
  const sub = templates.subcontextSettings ?? null;
  const defaults = templates.categoryDefaults ?? null;
  const out: Obj = {
    id, name: reader.string("name", "", MAX_NAME_CHARS), enabled: reader.boolean("enabled", true),
    create_subcontext: reader.boolean("createSubcontext"),
    subcontext_config: contextConfig(sub ? sub.child("contextConfig") : null, entryConfig()),
    use_category_defaults: reader.boolean("useCategoryDefaults"),
    category_defaults: emptyEntry(),
  };
  if (defaults) {
    const template = await lorebookEntry(defaults, new Set([...known, id]));
    template.id = "";
    template.category = id;
    out.category_defaults = template;
  }
  const rest = reader.rest(CATEGORY_FIELDS);
  if (sub) {
    const subRest = sub.rest(["contextConfig"]);
    if (Object.keys(subRest).length) rest.subcontextSettings = subRest;
  }
  if (Object.keys(rest).length) out.novelai = rest;
  return out;
}

function preset(parameters: Reader, name: string): Obj {
  const sampling: Obj = Object.fromEntries(SAMPLING_FIELDS.map((f) => [f, null]));
  for (const [source, target] of Object.entries(PARAMETERS)) {
    const value = INTEGER_PARAMETERS.includes(source) ? parameters.integer(source, null, 0) : parameters.number(source, null);
    if (value !== null) sampling[target] = value;
  }
  const order: { sampler: string; enabled: boolean }[] = [];
  parameters.items("order", 32).forEach((raw, index) => {
    let samplerId: string, enabled: boolean;
    if (typeof raw === "number") {
      // Old files number the samplers: 0 temperature, 1 top_k, 2 top_p, 3 tfs, 4 top_a, 5 typical_p.
      const names = ["temperature", "top_k", "top_p", "tfs", "top_a", "typical_p"];
      if (!(Number.isInteger(raw) && raw >= 0 && raw < names.length)) throw new ImportRefused(`${parameters.at("order")}[${index}]`, `unknown sampler number ${raw}`);
      samplerId = names[raw];
      enabled = true;
    } else {
      const step = new Reader(raw, `${parameters.at("order")}[${index}]`);
      samplerId = step.string("id", "", 64);
      enabled = step.boolean("enabled", true);
    }
    if (samplerId in SAMPLERS && order.every((s) => s.sampler !== SAMPLERS[samplerId])) order.push({ sampler: SAMPLERS[samplerId], enabled });
  });
  const maxNew = parameters.integer("max_length", null, 1, 100_000);
  const minNew = parameters.integer("min_length", 0, 0, 100_000);
  // NovelAI leaves out samplers it does not use; the text service wants each one named.
  if (order.length) for (const sampler of SAMPLER_NAMES) if (!order.some((s) => s.sampler === sampler)) order.push({ sampler, enabled: false });
  const out: Obj = { format: "fabula-preset", version: 2, name, description: "", text_model: "", sampling,
    sampler_order: order, max_new_tokens: maxNew, min_new_tokens: minNew || 0 };
  const rest = parameters.rest([...Object.keys(PARAMETERS), "order", "max_length", "min_length"]);
  if (Object.keys(rest).length) out.novelai = rest;
  return out;
}

interface Scenario {
  title: string;
  story: StoryJson;
  prompt: string;
  lorebook: Obj;
  preset: Obj | null;
}

export async function scenarioFromJson(data: Json): Promise<Scenario> {
  const reader = new Reader(data, "");
  if (!reader.has("scenarioVersion")) throw new ImportRefused("scenarioVersion", "is missing: not a NovelAI scenario");
  reader.integer("scenarioVersion", null, 0, 1000);
  const title = reader.string("title", "", MAX_NAME_CHARS);
  const texts: [string, Reader | null][] = reader.items("context", 2).map((raw, index) => {
    const item = new Reader(raw, `context[${index}]`);
    return [item.string("text"), item.child("contextConfig")];
  });
  const [memoryText, memoryReader] = texts[0] ?? ["", null];
  const [noteText, noteReader] = texts[1] ?? ["", null];
  const story = defaultStory("");
  const settings = story.settings as Obj;
  let presetDoc: Obj | null = null;
  const extra: Obj = {};
  const settingsReader = reader.child("settings");
  if (settingsReader) {
    settings.text_model = settingsReader.string("model", "", MAX_NAME_CHARS);
    const parameters = settingsReader.child("parameters");
    if (parameters) {
      presetDoc = preset(parameters, settingsReader.string("preset", "", MAX_NAME_CHARS) || `${title || "Scenario"} settings`);
      presetDoc.text_model = settings.text_model;
    }
    const rest = settingsReader.rest(["model", "parameters", "preset"]);
    if (Object.keys(rest).length) extra.settings = rest;
  }
  const lorebookName = cpPrefixFree(`${title} lorebook`);
  const lorebookData = (data as Obj).lorebook;
  const lorebook = lorebookData !== undefined && lorebookData !== null
    ? await lorebookFromJson(lorebookData, lorebookName, "lorebook")
    : { format: "fabula-lorebook", version: 2, name: lorebookName, description: "", entries: [], categories: [] };
  story.description = reader.string("description", "", MAX_STORY_TEXT_CHARS);
  story.tags = reader.strings("tags", 200, MAX_NAME_CHARS);
  const prompt = reader.string("prompt", "", MAX_STORY_TEXT_CHARS);
  story.memory = { text: memoryText, context_config: contextConfig(memoryReader, memoryConfig()) };
  story.authors_note = { text: noteText, context_config: contextConfig(noteReader, authorsNoteConfig()) };
  story.story_config = contextConfig(reader.child("storyContextConfig"), storyConfig());
  Object.assign(extra, reader.rest(["scenarioVersion", "title", "description", "tags", "prompt", "context", "settings",
    "lorebook", "storyContextConfig"]));
  if (Object.keys(extra).length) story.novelai = extra;
  return { title, story, prompt, lorebook, preset: presetDoc };
}

async function createDocument(vault: Vault, type: ObjectType, document: Obj): Promise<string> {
  const id = newId();
  await vault.ensureKeys([{ type, id }]);
  await vault.put(type, id, canonicalJson(document), 0);
  return id;
}

/** Store the file's lorebook, preset and story in that order; if a write fails, delete what was written. */
export async function importNovelAI(vault: Vault, data: Uint8Array, filename: string, kind: "scenario" | "lorebook"): Promise<ImportOutcome> {
  const parsed = loadJson(data, filename || "the file");
  if (kind === "lorebook") {
    const lorebook = await lorebookFromJson(parsed, stem(filename));
    await createDocument(vault, "lorebooks", lorebook);
    const count = (lorebook.entries as Json[]).length;
    return { kind, summary: `Imported the lorebook “${lorebook.name}” (${count} entr${count === 1 ? "y" : "ies"}).` };
  }
  const scenario = await scenarioFromJson(parsed);
  const written: [ObjectType, string][] = [];
  try {
    const story = clone(scenario.story);
    const entries = scenario.lorebook.entries as Json[], categories = scenario.lorebook.categories as Json[];
    if (entries.length || categories.length) {
      const id = await createDocument(vault, "lorebooks", scenario.lorebook);
      written.push(["lorebooks", id]);
      story.lorebook_ids = [id];
    }
    if (scenario.preset) {
      const id = await createDocument(vault, "presets", scenario.preset);
      written.push(["presets", id]);
      (story.settings as Obj).preset_id = id;
    }
    const title = scenario.title || stem(filename);
    const blocks = scenario.prompt ? [{ type: "text", origin: "prompt", text: scenario.prompt }] : [];
    const doc = await new StoryStore(vault).create(title, blocks, story);
    return { kind, summary: `Imported the story “${title}”.`, storyId: doc.id };
  } catch (error) {
    for (const [type, id] of written.reverse()) await vault.delete(type, id).catch(() => undefined); // the import failed already
    throw error;
  }
}
