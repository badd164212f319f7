// Exporting from the library: one story as HTML or EPUB (made here from the decrypted documents,
// at the history's head, as the SDK's export_story), or the whole account as the archive the
// server keeps (GET /user/export: every object still encrypted, docs/formats.md, section 10).
import type { Vault } from "../api/vault";
import { StoryStore } from "../documents/store";
import { storyEpub } from "./epub";
import { storyHtml } from "./html";
import { readPng, type PngImage } from "./png";

export type StoryFormat = "html" | "epub";

export async function exportStory(vault: Vault, id: string, format: StoryFormat): Promise<{ data: Blob; name: string }> {
  const doc = await new StoryStore(vault).open(id);
  const blocks = doc.history.blocks;
  const images = new Map<string, PngImage>();
  for (const block of blocks) {
    if (block.type !== "illustration") continue;
    const imageId = String(block.image_id ?? "");
    if (images.has(imageId)) continue;
    const stored = await vault.get("images", imageId);
    images.set(imageId, readPng(stored.plaintext, `images/${imageId}`));
  }
  const base = fileName(String(doc.story.title || "") || "story");
  if (format === "html") {
    return { data: new Blob([storyHtml(doc.story, blocks, images)], { type: "text/html;charset=utf-8" }), name: `${base}.html` };
  }
  const epub = storyEpub(doc.story, blocks, images, id, "en", vault.username);
  return { data: new Blob([epub as BlobPart], { type: "application/epub+zip" }), name: `${base}.epub` };
}

export async function exportArchive(vault: Vault): Promise<{ data: Blob; name: string }> {
  const response = await vault.api.request("GET", "/user/export");
  const day = new Date().toISOString().slice(0, 10);
  return { data: await response.blob(), name: `fabula-${fileName(vault.username)}-${day}.tar` };
}

export function fileName(title: string): string {
  return title.replace(/[^\p{L}\p{N} ._-]+/gu, "").trim().replace(/\s+/g, "-").slice(0, 80) || "story";
}

/** Hand a file to the browser's download. */
export function download(file: { data: Blob; name: string }): void {
  const url = URL.createObjectURL(file.data);
  const link = document.createElement("a");
  link.href = url;
  link.download = file.name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
