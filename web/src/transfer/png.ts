// What the exports need of a stored picture (docs/formats.md, section 8): its size (IHDR) and its
// text chunks, where the image service's `fabula` chunk says whether the built-in model made it.
import { decodeUtf8 } from "../crypto/bytes";

export interface PngImage {
  png: Uint8Array;
  width: number;
  height: number;
  builtinModel: boolean;
}

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

export function readPng(png: Uint8Array, what: string): PngImage {
  if (png.length < 33 || SIGNATURE.some((b, i) => png[i] !== b)) throw new Error(`${what}: not a PNG file`);
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const text: Record<string, string> = {};
  let width = 0, height = 0;
  for (let at = 8; at + 12 <= png.length;) {
    const length = view.getUint32(at);
    const type = decodeUtf8(png.subarray(at + 4, at + 8));
    const data = png.subarray(at + 8, at + 8 + length);
    if (type === "IHDR") {
      width = view.getUint32(at + 8);
      height = view.getUint32(at + 12);
    } else if (type === "tEXt" || type === "iTXt") {
      const zero = data.indexOf(0);
      if (zero > 0) {
        const key = decodeUtf8(data.subarray(0, zero));
        let value = data.subarray(zero + 1);
        if (type === "iTXt") {
          // compression flag, method, language\0, translated keyword\0, then the text (uncompressed only)
          if (value[0] !== 0) continue;
          let rest = value.subarray(2);
          for (let skip = 0; skip < 2; skip++) rest = rest.subarray(rest.indexOf(0) + 1);
          value = rest;
        }
        text[key] = type === "tEXt" ? Array.from(value, (b) => String.fromCharCode(b)).join("") : decodeUtf8(value);
      }
    } else if (type === "IEND") break;
    at += 12 + length;
  }
  let builtinModel = false;
  try {
    const facts = JSON.parse(text.fabula ?? "");
    builtinModel = !!(facts && typeof facts === "object" && facts.builtin_model);
  } catch {
    builtinModel = false; // no facts: the picture says nothing about its model
  }
  return { png, width, height, builtinModel };
}
