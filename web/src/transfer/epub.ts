// A story as an EPUB 3 book, the same book as the SDK's exporters/epub.py: a title page, one
// chapter per `#` / `##` heading of the text (or one chapter), the illustrations as image files,
// AI-written text marked, and the built-in image model's pictures with their visible note. The
// container is a zip (fflate) whose first member is the uncompressed `mimetype`.
import { zipSync, type Zippable } from "fflate";
import { utf8 } from "../crypto/bytes";
import type { Block } from "../documents/content";
import { tags, type StoryJson } from "../documents/story";
import type { PngImage } from "./png";
import { escapeHtml, figureMarkup, legend, sections, STYLE } from "./render";

const CONTAINER = `<?xml version="1.0" encoding="UTF-8"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="EPUB/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>
`;

// XML 1.0 allows no C0 controls but tab and line ends (and no lone surrogates); a model can write
// them, HTML tolerates them, an EPUB reader's XML parser does not: they are left out of the book.
const NOT_XML = /[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;

function xhtml(title: string, language: string, body: string, extra = ""): string {
  return xmlSafe`<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops" lang="${language}" xml:lang="${language}">
<head><title>${escapeHtml(title)}</title>${extra}</head>
<body>${body}</body>
</html>
`;
}

function xmlSafe(strings: TemplateStringsArray, ...values: string[]): string {
  return String.raw({ raw: strings }, ...values).replace(NOT_XML, "");
}

const STYLE_LINK = '<link href="../style/story.css" rel="stylesheet" type="text/css"/>';

export function storyEpub(story: StoryJson, blocks: Block[], images: Map<string, PngImage>, identifier: string,
                          language = "en", author = ""): Uint8Array {
  const title = String(story.title || "") || "Untitled story";
  const description = String(story.description || "");
  const files: Record<string, Uint8Array> = {};
  const manifest: string[] = [
    '<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>',
    '<item id="style" href="style/story.css" media-type="text/css"/>',
  ];
  files["EPUB/style/story.css"] = utf8.encode(STYLE);
  const added = new Set<string>();
  const imageSrc = (imageId: string, image: PngImage): string => {
    const name = `images/${imageId}.png`;
    if (!added.has(imageId)) {
      files[`EPUB/${name}`] = image.png;
      manifest.push(`<item id="image-${escapeHtml(imageId)}" href="${name}" media-type="image/png"/>`);
      added.add(imageId);
    }
    return `../${name}`;
  };
  const chapters: { id: string; href: string; title: string }[] = [];
  const titleBody = `<h1>${escapeHtml(title)}</h1>` + (description ? `<p>${escapeHtml(description)}</p>` : "") + legend();
  files["EPUB/text/title.xhtml"] = utf8.encode(xhtml(title, language, titleBody, STYLE_LINK));
  manifest.push('<item id="title" href="text/title.xhtml" media-type="application/xhtml+xml"/>');
  sections(blocks).forEach(([heading, items], index) => {
    const number = index + 1;
    if (!items.length && !heading) return;
    const name = heading || (number === 1 ? title : `Part ${number}`);
    const markup = [`<h2>${escapeHtml(name)}</h2>`];
    for (const item of items) {
      if (typeof item === "string") markup.push(item);
      else {
        item.image = images.get(item.imageId) ?? null;
        markup.push(figureMarkup(item, imageSrc));
      }
    }
    const href = `text/chapter-${number}.xhtml`;
    files[`EPUB/${href}`] = utf8.encode(xhtml(name, language, markup.join(""), STYLE_LINK));
    manifest.push(`<item id="chapter-${number}" href="${href}" media-type="application/xhtml+xml"/>`);
    chapters.push({ id: `chapter-${number}`, href, title: name });
  });
  const nav = `<nav epub:type="toc" id="toc"><h1>${escapeHtml(title)}</h1><ol>` +
    chapters.map((c) => `<li><a href="${c.href}">${escapeHtml(c.title)}</a></li>`).join("") + "</ol></nav>";
  files["EPUB/nav.xhtml"] = utf8.encode(xhtml(title, language, nav));
  const modified = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const metadata = [
    `<dc:identifier id="id">fabula-story-${escapeHtml(identifier)}</dc:identifier>`,
    `<dc:title>${escapeHtml(title)}</dc:title>`,
    `<dc:language>${escapeHtml(language)}</dc:language>`,
    `<meta property="dcterms:modified">${modified}</meta>`,
    ...(author ? [`<dc:creator id="creator">${escapeHtml(author)}</dc:creator>`] : []),
    ...(description ? [`<dc:description>${escapeHtml(description)}</dc:description>`] : []),
    ...tags(story).map((tag) => `<dc:subject>${escapeHtml(tag)}</dc:subject>`),
  ];
  const spine = ['<itemref idref="nav"/>', '<itemref idref="title"/>', ...chapters.map((c) => `<itemref idref="${c.id}"/>`)];
  files["EPUB/content.opf"] = utf8.encode(`<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id" xml:lang="${escapeHtml(language)}">
<metadata xmlns:dc="http://purl.org/dc/elements/1.1/">
${metadata.join("\n")}
</metadata>
<manifest>
${manifest.join("\n")}
</manifest>
<spine>
${spine.join("\n")}
</spine>
</package>
`.replace(NOT_XML, ""));
  // The order of the zip is the order of this object: mimetype first, stored (level 0), as EPUB requires.
  const zip: Zippable = { mimetype: [utf8.encode("application/epub+zip"), { level: 0 }],
    "META-INF/container.xml": utf8.encode(CONTAINER) };
  for (const [name, data] of Object.entries(files)) zip[name] = [data, { level: name.endsWith(".png") ? 0 : 6 }];
  return zipSync(zip);
}
