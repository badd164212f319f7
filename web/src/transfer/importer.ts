// What the library's Import takes, told apart as the SDK's importers tell them apart
// (sdk/fabula_sdk/importers/__init__.py): a Fabula export archive, a NovelAI `.scenario` or
// `.lorebook`, a Markdown or plain-text story. A file is read and checked whole before anything
// is stored.
import type { Vault } from "../api/vault";
import { StoryStore } from "../documents/store";
import { defaultStory } from "../documents/story";
import { importArchive, isArchive } from "./archive";
import { ImportRefused } from "./limits";
import { importNovelAI } from "./novelai";
import { markdown, plainText } from "./text";

export type ImportKind = "archive" | "scenario" | "lorebook" | "markdown" | "text";

export interface ImportOutcome {
  kind: ImportKind;
  /** What the library says afterwards. */
  summary: string;
  storyId?: string;
}

function suffix(filename: string): string {
  const base = filename.split(/[\\/]/).pop() ?? "";
  const dot = base.lastIndexOf(".");
  return dot > 0 ? base.slice(dot).toLowerCase() : "";
}

export function stem(filename: string): string {
  const base = filename.split(/[\\/]/).pop() ?? "";
  const dot = base.lastIndexOf(".");
  return dot > 0 ? base.slice(0, dot) : base;
}

export function importKind(data: Uint8Array, filename: string): ImportKind {
  if (isArchive(data)) return "archive";
  const ext = suffix(filename);
  if (ext === ".tar") return "archive";
  if (ext === ".scenario") return "scenario";
  if (ext === ".lorebook") return "lorebook";
  if (ext === ".md" || ext === ".markdown") return "markdown";
  if (ext === "" || ext === ".txt" || ext === ".text") return "text";
  if (ext === ".json") {
    try {
      const parsed = JSON.parse(new TextDecoder().decode(data.subarray(0, 1_000_000)).replace(/^\uFEFF/, ""));
      if (parsed && typeof parsed === "object" && "scenarioVersion" in parsed) return "scenario";
      if (parsed && typeof parsed === "object" && "lorebookVersion" in parsed) return "lorebook";
    } catch {
      // not JSON: refused below
    }
  }
  throw new ImportRefused("", `cannot tell the format of ${JSON.stringify(filename)}: a Fabula archive (.tar), a NovelAI ` +
    ".scenario or .lorebook, Markdown (.md) or text (.txt)");
}

export async function importFile(vault: Vault, data: Uint8Array, filename: string, archivePassword: string): Promise<ImportOutcome> {
  const kind = importKind(data, filename);
  if (kind === "archive") {
    if (!archivePassword) throw new ImportRefused("password", "an archive opens with the password its account had when it was exported");
    const done = await importArchive(vault, data, archivePassword);
    return { kind, summary: `Imported ${done.importedObjects} objects (${done.stories} stories) from the archive.` };
  }
  if (kind === "scenario" || kind === "lorebook") return importNovelAI(vault, data, filename, kind);
  const read = kind === "markdown" ? markdown(data, "", filename) : plainText(data, stem(filename), filename);
  const title = read.title || stem(filename);
  const story = defaultStory("");
  story.tags = read.tags;
  const doc = await new StoryStore(vault).create(title, read.text ? [{ type: "text", origin: "user", text: read.text }] : [], story);
  return { kind, summary: `Imported the story “${title}”.`, storyId: doc.id };
}
