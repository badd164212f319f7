// Pictures as the SDK stores them (docs/formats.md, section 8): `images/<id>` is the PNG as the
// image service returned it (stored uncompressed: PNG is deflated already), `images/<id>_thumb`
// a PNG at most 256 px a side (its key derived from the image's); an illustration block names
// the image, its caption and the exact settings it was made with.
import type { Vault } from "../api/vault";
import { decodeUtf8 } from "../crypto/bytes";
import type { Block } from "../documents/content";
import type { Json } from "../documents/json";
import { newId } from "../documents/store";

export const THUMBNAIL_SIDE = 256;

export async function pngBlob(canvas: HTMLCanvasElement): Promise<Blob> {
  return new Promise((resolve, reject) => canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("the canvas gave no PNG"))), "image/png"));
}

export async function thumbnail(png: Uint8Array): Promise<Uint8Array> {
  const bitmap = await createImageBitmap(new Blob([png as BlobPart], { type: "image/png" }));
  const scale = Math.min(1, THUMBNAIL_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  canvas.getContext("2d")!.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return new Uint8Array(await (await pngBlob(canvas)).arrayBuffer());
}

/** Store a picture and its thumbnail; the block that names it (settings with the seed set). */
export async function storeIllustration(vault: Vault, png: Uint8Array, caption: string, settings: Json): Promise<Block> {
  const id = newId();
  await vault.ensureKeys([{ type: "images", id }]);
  await vault.put("images", id, png, 0, false);
  await vault.put("images", `${id}_thumb`, await thumbnail(png), 0, false);
  return { type: "illustration", image_id: id, caption, settings };
}

const urls = new Map<string, Promise<string>>();

/** An object URL of a stored picture (decrypted in the browser), cached for the page's life. */
export function imageUrl(vault: Vault, id: string): Promise<string> {
  let url = urls.get(id);
  if (!url) {
    url = vault.get("images", id).then((s) => URL.createObjectURL(new Blob([s.plaintext as BlobPart], { type: "image/png" })));
    url.catch(() => urls.delete(id));
    urls.set(id, url);
  }
  return url;
}

export async function imageBytes(vault: Vault, id: string): Promise<Uint8Array> {
  return (await vault.get("images", id)).plaintext;
}

/** The image service's `fabula` text chunk (JSON: every parameter, the model, `builtin_model`). */
export function fabulaChunk(png: Uint8Array): Record<string, any> | null {
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let at = 8;
  while (at + 8 <= png.length) {
    const length = view.getUint32(at);
    const type = decodeUtf8(png.subarray(at + 4, at + 8));
    const data = png.subarray(at + 8, at + 8 + length);
    if (type === "tEXt" || type === "iTXt") {
      const zero = data.indexOf(0);
      if (zero > 0 && decodeUtf8(data.subarray(0, zero)) === "fabula") {
        let rest = data.subarray(zero + 1);
        if (type === "iTXt") {
          // compression flag, method, then language and translated keyword, each ending in 0
          if (rest[0] !== 0) return null;
          rest = rest.subarray(2);
          rest = rest.subarray(rest.indexOf(0) + 1);
          rest = rest.subarray(rest.indexOf(0) + 1);
        }
        try {
          return JSON.parse(decodeUtf8(rest));
        } catch {
          return null;
        }
      }
    }
    if (type === "IEND") break;
    at += 12 + length;
  }
  return null;
}
