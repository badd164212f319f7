// The ProseMirror schema of the story text: paragraphs (one per line of the story), text carrying
// an `origin` mark (ai, edit, prompt; user text has none), and illustrations as inline atoms that
// keep their whole block (stage 2 renders the picture; here it shows its caption).
import { Schema } from "prosemirror-model";

export const schema = new Schema({
  nodes: {
    doc: { content: "paragraph+" },
    paragraph: {
      content: "inline*",
      // The origin of the newline that starts this paragraph (the first paragraph has none).
      attrs: { brk: { default: "user" } },
      parseDOM: [{ tag: "p" }],
      toDOM: () => ["p", 0],
    },
    text: { group: "inline" },
    illustration: {
      group: "inline",
      inline: true,
      atom: true,
      attrs: { block: { default: null } },
      toDOM: (node) => ["span", { class: "illustration", "data-image-id": node.attrs.block?.image_id ?? "",
        title: "Illustration" }, `[illustration: ${node.attrs.block?.caption || node.attrs.block?.image_id || "image"}]`],
    },
  },
  marks: {
    origin: {
      attrs: { origin: { default: "ai" } },
      // Typing at the end of AI text is the writer's own text, not the model's.
      inclusive: false,
      toDOM: (mark) => ["span", { class: `origin-${mark.attrs.origin}`, "data-origin": mark.attrs.origin }, 0],
      parseDOM: [{ tag: "span[data-origin]", getAttrs: (dom) => ({ origin: (dom as HTMLElement).dataset.origin }) }],
    },
  },
});
