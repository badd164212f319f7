// Typed access to an imported JSON file, each failure naming the field by its JSON path: the
// SDK's importers/checks.py (Reader, load_json), with its limits. Values are the parsed JSON
// (documents/json.ts keeps `1.0` apart from `1`), so a document built from them has the bytes
// the SDK's has.
import { Float, parseJson, type Json } from "../documents/json";
import { ImportRefused, MAX_FILE_BYTES } from "./limits";

export const MAX_ENTRIES = 5_000;
export const MAX_CATEGORIES = 500;
export const MAX_KEYS_PER_ENTRY = 200;
export const MAX_KEY_CHARS = 1_000;
export const MAX_ENTRY_TEXT_CHARS = 100_000;
export const MAX_JSON_DEPTH = 32;

const cpLen = (s: string) => Array.from(s).length;

export function loadJson(data: Uint8Array, what: string): Json {
  if (data.length > MAX_FILE_BYTES) throw new ImportRefused("", `${what} is ${data.length} bytes; at most ${MAX_FILE_BYTES} are imported`);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(data);
  } catch (error) {
    throw new ImportRefused("", `${what} is not UTF-8 (${error})`);
  }
  checkDepth(text, what);
  try {
    return parseJson(text);
  } catch (error) {
    throw new ImportRefused("", `${what} is not valid JSON (${error})`);
  }
}

function checkDepth(text: string, what: string): void {
  let depth = 0, inString = false, escaped = false;
  for (const char of text) {
    if (inString) {
      if (escaped) escaped = false;
      else if (char === "\\") escaped = true;
      else if (char === '"') inString = false;
    } else if (char === '"') inString = true;
    else if (char === "[" || char === "{") {
      if (++depth > MAX_JSON_DEPTH) throw new ImportRefused("", `${what} nests objects and lists more than ${MAX_JSON_DEPTH} deep`);
    } else if (char === "]" || char === "}") depth--;
  }
}

export function describe(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return "a boolean";
  if (typeof value === "number" || value instanceof Float) return "a number";
  if (typeof value === "string") return "a string";
  if (Array.isArray(value)) return "a list";
  return "an object";
}

const isObject = (v: unknown): v is { [key: string]: Json } => typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Float);

export class Reader {
  readonly data: { [key: string]: Json };

  constructor(data: Json | undefined, readonly path: string) {
    if (!isObject(data)) throw new ImportRefused(path || "(top level)", `must be an object, not ${describe(data)}`);
    this.data = data;
  }

  at(key: string): string {
    return this.path ? `${this.path}.${key}` : key;
  }

  private get(key: string): Json | undefined {
    return Object.prototype.hasOwnProperty.call(this.data, key) ? this.data[key] : undefined;
  }

  has(key: string): boolean {
    const v = this.get(key);
    return v !== undefined && v !== null;
  }

  string(key: string, fallback = "", limit = MAX_ENTRY_TEXT_CHARS): string {
    const value = this.get(key);
    if (value === undefined || value === null) return fallback;
    if (typeof value !== "string") throw new ImportRefused(this.at(key), `must be a string, not ${describe(value)}`);
    const n = cpLen(value);
    if (n > limit) throw new ImportRefused(this.at(key), `is ${n} characters long; at most ${limit} are imported`);
    return value;
  }

  boolean(key: string, fallback = false): boolean {
    const value = this.get(key);
    if (value === undefined || value === null) return fallback;
    if (typeof value !== "boolean") throw new ImportRefused(this.at(key), `must be true or false, not ${describe(value)}`);
    return value;
  }

  /** The number as read (a Float stays a Float), or `fallback`. */
  number(key: string, fallback: number | Float | null = null, minimum?: number, maximum?: number): number | Float | null {
    const value = this.get(key);
    if (value === undefined || value === null) return fallback;
    const n = value instanceof Float ? value.value : value;
    if (typeof n !== "number" || !Number.isFinite(n)) throw new ImportRefused(this.at(key), `must be a number, not ${describe(value)}`);
    if ((minimum !== undefined && n < minimum) || (maximum !== undefined && n > maximum)) {
      throw new ImportRefused(this.at(key), `must be between ${minimum ?? "None"} and ${maximum ?? "None"}, not ${n}`);
    }
    return value as number | Float;
  }

  integer(key: string, fallback: number | null = null, minimum = -(2 ** 31), maximum = 2 ** 31 - 1): number | null {
    const value = this.number(key, null, minimum, maximum);
    if (value === null) return fallback;
    const n = Number(value);
    if (!Number.isInteger(n)) throw new ImportRefused(this.at(key), `must be a whole number, not ${n}`);
    return n;
  }

  strings(key: string, limit = MAX_KEYS_PER_ENTRY, chars = MAX_KEY_CHARS): string[] {
    const value = this.get(key);
    if (value === undefined || value === null) return [];
    if (!Array.isArray(value)) throw new ImportRefused(this.at(key), `must be a list of strings, not ${describe(value)}`);
    if (value.length > limit) throw new ImportRefused(this.at(key), `has ${value.length} items; at most ${limit} are imported`);
    value.forEach((item, index) => {
      if (typeof item !== "string") throw new ImportRefused(`${this.at(key)}[${index}]`, `must be a string, not ${describe(item)}`);
      const n = cpLen(item);
      if (n > chars) throw new ImportRefused(`${this.at(key)}[${index}]`, `is ${n} characters; at most ${chars}`);
    });
    return [...(value as string[])];
  }

  items(key: string, limit: number): Json[] {
    const value = this.get(key);
    if (value === undefined || value === null) return [];
    if (!Array.isArray(value)) throw new ImportRefused(this.at(key), `must be a list, not ${describe(value)}`);
    if (value.length > limit) throw new ImportRefused(this.at(key), `has ${value.length} items; at most ${limit} are imported`);
    return value;
  }

  child(key: string): Reader | null {
    const value = this.get(key);
    return value === undefined || value === null ? null : new Reader(value, this.at(key));
  }

  /** The fields no mapping uses, kept with the imported document (nothing is silently lost). */
  rest(known: string[]): { [key: string]: Json } {
    const out: { [key: string]: Json } = {};
    for (const [key, value] of Object.entries(this.data)) if (!known.includes(key)) out[key] = value;
    return out;
  }
}
