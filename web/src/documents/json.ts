// Canonical JSON as the SDK writes it (docs/formats.md, "Format rules"): sorted keys, no
// whitespace, non-ASCII as itself — Python's json.dumps(sort_keys=True, separators=(",", ":"),
// ensure_ascii=False). Python writes a float that holds a whole number as `1.0`, JavaScript as `1`;
// so numbers read with a fraction or an exponent are kept as `Float`, and written back the
// Python way, and documents give the same bytes in both.

export class Float {
  constructor(readonly value: number) {}
  valueOf(): number {
    return this.value;
  }
}

export type Json = null | boolean | number | string | Float | Json[] | { [key: string]: Json };

export function num(value: Json | undefined): number | null {
  if (value instanceof Float) return value.value;
  return typeof value === "number" ? value : null;
}

function pythonFloat(value: number): string {
  if (!Number.isFinite(value)) throw new Error("documents hold finite numbers only");
  if (Number.isInteger(value) && Math.abs(value) < 1e16) return `${value}.0`;
  // Python's repr and JavaScript's shortest round-trip form agree but for the exponent's digits.
  return String(value).replace(/e([+-])(\d)$/, "e$10$2");
}

/** Parse keeping floats as Float (the reviver's source text tells `1.0` from `1`). */
export function parseJson(text: string): Json {
  return JSON.parse(text, function (this: unknown, _key: string, value: unknown, context?: { source?: string }) {
    if (typeof value === "number" && context?.source !== undefined && /[.eE]/.test(context.source)) return new Float(value);
    return value;
  } as any);
}

export function canonicalJson(value: Json): string {
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (value instanceof Float) return pythonFloat(value.value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new Error("documents hold finite numbers only");
    return Number.isInteger(value) ? String(value) : pythonFloat(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const keys = Object.keys(value).filter((k) => value[k] !== undefined).sort(comparePython);
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(",")}}`;
}

/** Python sorts strings by code point; JavaScript's default sort by UTF-16 unit. */
function comparePython(a: string, b: string): number {
  const x = Array.from(a), y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0)! - y[i].codePointAt(0)!;
    if (d) return d;
  }
  return x.length - y.length;
}

export function clone<T extends Json>(value: T): T {
  if (value === null || typeof value !== "object" || value instanceof Float) return value;
  if (Array.isArray(value)) return value.map((v) => clone(v)) as T;
  const out: { [key: string]: Json } = {};
  for (const [k, v] of Object.entries(value)) out[k] = clone(v);
  return out as T;
}

export class DocumentError extends Error {
  name = "DocumentError";
}

export class NewerFormatError extends DocumentError {
  name = "NewerFormatError";
}

/** A document value as plain JSON for a request body (Float becomes its number). */
export function toPlain(value: Json | undefined): unknown {
  if (value instanceof Float) return value.value;
  if (Array.isArray(value)) return value.map(toPlain);
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toPlain(v)]));
  return value;
}

/** Refuse to write a document of a newer format version than `known` (read, shown, never written). */
export function checkWritableVersion(doc: Json, known: number, what: string): void {
  const version = (doc as any)?.version;
  if (typeof version === "number" && version > known) {
    throw new NewerFormatError(`${what} is format version ${version}, newer than the version ${known} this editor writes`);
  }
}
