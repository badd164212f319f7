// Plain-text and Markdown stories, read as the SDK's importers/text.py reads them: a Markdown
// file's first level-1 heading (`# Title`) becomes the title and leaves the text; a front matter
// block (`---` ... `---`) at the top gives `title` and `tags`; the rest is the story as written.
import { cpLength } from "../documents/content";
import { ImportRefused, MAX_FILE_BYTES, MAX_NAME_CHARS, MAX_STORY_TEXT_CHARS } from "./limits";

export interface ImportedText {
  title: string;
  text: string;
  tags: string[];
}

const HEADING = /^#\s+(.+?)\s*#*\s*$/;

const cpPrefix = (text: string, n: number) => Array.from(text).slice(0, n).join("");

function stripChars(text: string, chars: string): string {
  let start = 0, end = text.length;
  while (start < end && chars.includes(text[start])) start++;
  while (end > start && chars.includes(text[end - 1])) end--;
  return text.slice(start, end);
}

function decode(data: Uint8Array, what: string): string {
  if (data.length > MAX_FILE_BYTES) throw new ImportRefused("", `${what} is ${data.length} bytes; at most ${MAX_FILE_BYTES} are imported`);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(data);
  } catch (error) {
    throw new ImportRefused("", `${what} is not UTF-8 text (${error})`);
  }
  if (text.includes("\u0000")) throw new ImportRefused("", `${what} holds NUL characters: not a text file`);
  text = text.replace(/\r\n/g, "\n").replace(/\r/g, "\n");
  const length = cpLength(text);
  if (length > MAX_STORY_TEXT_CHARS) throw new ImportRefused("", `${what} has ${length} characters; at most ${MAX_STORY_TEXT_CHARS} are imported`);
  return text;
}

export function plainText(data: Uint8Array, title: string, what: string): ImportedText {
  return { title, text: decode(data, what), tags: [] };
}

export function markdown(data: Uint8Array, title: string, what: string): ImportedText {
  const text = decode(data, what);
  let tags: string[] = [];
  let lines = text.split("\n");
  if (lines.length && lines[0].trim() === "---") {
    for (let end = 1; end < lines.length; end++) {
      if (lines[end].trim() !== "---") continue;
      for (const line of lines.slice(1, end)) {
        const colon = line.indexOf(":");
        const key = (colon < 0 ? line : line.slice(0, colon)).trim().toLowerCase();
        const value = colon < 0 ? "" : line.slice(colon + 1).trim();
        if (key === "title" && value) title = cpPrefix(stripChars(value, "\"'"), MAX_NAME_CHARS);
        else if (key === "tags" && value) {
          tags = stripChars(value, "[]").split(",").filter((tag) => tag.trim()).map((tag) => stripChars(tag.trim(), "\"'"));
        }
      }
      lines = lines.slice(end + 1);
      break;
    }
  }
  for (let index = 0; index < lines.length; index++) {
    if (!lines[index].trim()) continue;
    const match = HEADING.exec(lines[index]);
    if (match) {
      if (!title) title = cpPrefix(match[1], MAX_NAME_CHARS);
      lines = [...lines.slice(0, index), ...lines.slice(index + 1)];
      while (index < lines.length && !lines[index].trim()) lines.splice(index, 1);
    }
    break;
  }
  return { title, text: lines.join("\n").replace(/^\n+/, ""), tags };
}
