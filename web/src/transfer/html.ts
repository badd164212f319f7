// A story as one standalone HTML file, as the SDK's exporters/html.py writes it: AI-written runs
// marked, illustrations embedded as data URIs, no scripts, nothing fetched from elsewhere.
import { toBase64 } from "../crypto/bytes";
import type { Block } from "../documents/content";
import type { StoryJson } from "../documents/story";
import type { PngImage } from "./png";
import { escapeHtml, figureMarkup, legend, sections, STYLE } from "./render";

export function storyHtml(story: StoryJson, blocks: Block[], images: Map<string, PngImage>, language = "en"): string {
  const title = escapeHtml(String(story.title || "") || "Untitled story");
  const body = [`<header><h1>${title}</h1>`];
  if (story.description) body.push(`<p class="description">${escapeHtml(String(story.description))}</p>`);
  body.push(legend(), "</header>");
  for (const [heading, items] of sections(blocks)) {
    body.push("<section>");
    if (heading) body.push(`<h2>${escapeHtml(heading)}</h2>`);
    for (const item of items) {
      if (typeof item === "string") body.push(item);
      else {
        item.image = images.get(item.imageId) ?? null;
        body.push(figureMarkup(item, (_id, image) => `data:image/png;base64,${toBase64(image.png)}`));
      }
    }
    body.push("</section>");
  }
  return [
    "<!DOCTYPE html>", `<html lang="${escapeHtml(language)}">`, "<head>", '<meta charset="utf-8"/>',
    '<meta name="viewport" content="width=device-width, initial-scale=1"/>',
    // Nothing may load from elsewhere: a reader opens the file offline, and a story must not phone home.
    "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\"/>",
    '<meta name="generator" content="Fabula"/>', `<title>${title}</title>`, `<style>${STYLE}</style>`, "</head>", "<body>",
    "<main>", "<article>", ...body, "</article>", "</main>", "</body>", "</html>", "",
  ].join("\n");
}
