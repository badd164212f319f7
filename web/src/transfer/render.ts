// The story as (X)HTML markup, shared by the HTML and EPUB exports; the same markup as the SDK's
// sdk/fabula_sdk/exporters/render.py: paragraphs from blank lines, AI-written text marked,
// illustrations as figures with captions, and a visible note under the built-in model's pictures.
import { isText, type Block } from "../documents/content";
import type { PngImage } from "./png";

export const NOISE_NOTE = "Made by Fabula's built-in image model, an untrained test model: this picture is noise, " +
  "not a drawing of the caption.";
const ORIGIN_LABELS: Record<string, string> = {
  ai: "written by the AI", edit: "AI text edited by the author", user: "written by the author", prompt: "the opening prompt",
};
// A line that starts a chapter in the EPUB (and a heading in the HTML): Markdown's # and ##.
const HEADING = /^(#{1,2})\s+(.+?)\s*#*\s*$/;

export const STYLE = `
body { font-family: Georgia, 'Times New Roman', serif; line-height: 1.6; max-width: 42em; margin: 2em auto;
       padding: 0 1em; color: #1a1a1a; background: #fffdf8; }
.origin-ai, .origin-edit { background: #e6f0ff; border-bottom: 1px dotted #3060a0; }
.origin-edit { background: #eef5e6; border-bottom-color: #508030; }
figure { margin: 1.5em 0; text-align: center; }
figure img { max-width: 100%; height: auto; }
figcaption { font-style: italic; }
.image-note { font-size: 0.9em; color: #7a2a00; border: 1px solid #d08050; padding: 0.3em; }
.legend { font-size: 0.9em; color: #444; border-top: 1px solid #ccc; border-bottom: 1px solid #ccc; }
`;

/** Python's html.escape: & < > always, quotes when `quote`. */
export function escapeHtml(text: string, quote = true): string {
  const out = text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  return quote ? out.replace(/"/g, "&quot;").replace(/'/g, "&#x27;") : out;
}

export interface Figure {
  kind: "figure";
  imageId: string;
  caption: string;
  image: PngImage | null;
}

export type Item = string | Figure;

function inline(text: string, origin: string): string {
  const escaped = escapeHtml(text, false).replace(/\n/g, "<br/>");
  if (origin === "ai" || origin === "edit") {
    return `<span class="origin-${origin}" data-origin="${origin}" title="${ORIGIN_LABELS[origin]}">${escaped}</span>`;
  }
  return escaped;
}

export function figureMarkup(figure: Figure, src: (imageId: string, image: PngImage) => string): string {
  const caption = escapeHtml(figure.caption);
  if (!figure.image) return `<figure><p class="image-note" role="note">Missing picture: ${caption}</p></figure>`;
  const parts = [`<figure id="image-${escapeHtml(figure.imageId)}">`,
    `<img src="${src(figure.imageId, figure.image)}" alt="${caption}" width="${figure.image.width}" height="${figure.image.height}"/>`,
    `<figcaption>${caption}</figcaption>`];
  if (figure.image.builtinModel) parts.push(`<p class="image-note" role="note">${escapeHtml(NOISE_NOTE, false)}</p>`);
  parts.push("</figure>");
  return parts.join("");
}

/** The story split at its heading lines: [heading, items]; the part before the first heading has
 * the heading "". Blank lines end paragraphs, single line breaks stay line breaks. */
export function sections(blocks: Block[]): [string, Item[]][] {
  const out: [string, Item[]][] = [["", []]];
  const paragraph: string[] = [];
  const close = () => {
    while (paragraph.length && paragraph[paragraph.length - 1] === "<br/>") paragraph.pop();
    if (paragraph.length) out[out.length - 1][1].push("<p>" + paragraph.join("") + "</p>");
    paragraph.length = 0;
  };
  for (const block of blocks) {
    if (block.type === "illustration") {
      close();
      out[out.length - 1][1].push({ kind: "figure", imageId: String(block.image_id ?? ""), caption: String(block.caption ?? ""), image: null });
      continue;
    }
    if (!isText(block)) continue;
    for (const piece of block.text.split(/(\n[ \t]*\n\s*)/)) {
      if (!piece) continue;
      if (!piece.trim() && piece.split("\n").length - 1 >= 2) {
        close();
        continue;
      }
      piece.split("\n").forEach((line, index) => {
        if (index > 0 && paragraph.length) paragraph.push("<br/>");
        const heading = HEADING.exec(line);
        if (heading && !paragraph.some((part) => part !== "<br/>")) {
          paragraph.length = 0;
          out.push([heading[2], []]);
          return;
        }
        if (line) paragraph.push(inline(line, block.origin));
      });
    }
  }
  close();
  return out.filter(([title, items], index) => items.length || title || index === 0);
}

export function legend(): string {
  return '<p class="legend">Text <span class="origin-ai" data-origin="ai">marked like this</span> was written by ' +
    'the AI; <span class="origin-edit" data-origin="edit">marked like this</span>, AI text the author ' +
    "edited. Everything else was written by the author.</p>";
}
