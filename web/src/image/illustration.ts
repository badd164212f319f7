// How an illustration block shows in the story: the picture (decrypted in the browser), its
// caption, its generation settings on demand, the built-in model's "this is noise" note, and a
// button that opens it in the image panel (re-run, variations, img2img, inpaint, outpaint).
import type { NodeView } from "prosemirror-view";
import type { Vault } from "../api/vault";
import type { Block } from "../documents/content";
import { toPlain } from "../documents/json";
import { fabulaChunk, imageBytes } from "./store";

export const NOISE_NOTE = "Made by the built-in untrained test model: the picture is noise. " +
  "Load a real checkpoint to get pictures (docs/image.md, \"Loading a real checkpoint\").";

export function illustrationView(vault: Vault, onOpen: (block: Block) => void) {
  return (block: Block): NodeView => {
    const figure = document.createElement("figure");
    figure.className = "illustration-figure";
    figure.contentEditable = "false";
    figure.dataset.imageId = String(block.image_id ?? "");
    const img = document.createElement("img");
    img.alt = String(block.caption || "Illustration");
    const settings = toPlain(block.settings) as Record<string, unknown> | null;
    if (settings && typeof settings.width === "number") {
      // The frame has its size before the picture arrives: nothing below it moves.
      img.width = settings.width as number;
      img.height = settings.height as number;
    }
    const caption = document.createElement("figcaption");
    caption.textContent = String(block.caption ?? "");
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "Generation settings";
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(settings, null, 1);
    details.append(summary, pre);
    const note = document.createElement("p");
    note.className = "noise-note";
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = "Edit picture";
    open.setAttribute("aria-label", `Edit picture: ${img.alt}`);
    open.addEventListener("click", () => onOpen(block));
    figure.append(img, caption, details, note, open);
    imageBytes(vault, String(block.image_id)).then((png) => {
      img.src = URL.createObjectURL(new Blob([png as BlobPart], { type: "image/png" }));
      figure.dataset.loaded = "yes";
      if (fabulaChunk(png)?.builtin_model) note.textContent = NOISE_NOTE;
    }).catch((e) => {
      note.textContent = `The picture could not be opened: ${e?.message ?? e}`;
      figure.dataset.loaded = "error";
    });
    return {
      dom: figure,
      stopEvent: (event) => event.target instanceof HTMLElement && event.target.closest("button, summary, details") !== null,
      ignoreMutation: () => true,
    };
  };
}
