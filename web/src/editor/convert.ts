// Between story blocks (docs/formats.md, section 4) and the ProseMirror document: a "\n" in the
// text is a paragraph break, so positions map one to one (a paragraph boundary is one newline).
import { Fragment, Node as PMNode } from "prosemirror-model";
import type { Block, Origin } from "../documents/content";
import { normalised } from "../documents/content";
import { schema } from "./schema";

export function blocksToDoc(blocks: Block[]): PMNode {
  const paragraphs: PMNode[][] = [[]];
  const breaks: Origin[] = ["user"];
  for (const block of blocks) {
    if (block.type === "text") {
      const origin = block.origin as Origin;
      const marks = origin === "user" ? [] : [schema.marks.origin.create({ origin })];
      const lines = (block.text as string).split("\n");
      lines.forEach((line, i) => {
        if (i > 0) {
          paragraphs.push([]);
          breaks.push(origin);
        }
        if (line) paragraphs[paragraphs.length - 1].push(schema.text(line, marks));
      });
    } else {
      paragraphs[paragraphs.length - 1].push(schema.nodes.illustration.create({ block }));
    }
  }
  return schema.node("doc", null, paragraphs.map((inline, i) => schema.node("paragraph", { brk: breaks[i] }, Fragment.fromArray(inline))));
}

export function docToBlocks(doc: PMNode): Block[] {
  const blocks: Block[] = [];
  doc.forEach((paragraph, _offset, index) => {
    if (index > 0) blocks.push({ type: "text", origin: paragraph.attrs.brk as Origin, text: "\n" });
    paragraph.forEach((child) => {
      if (child.isText) {
        const mark = child.marks.find((m) => m.type === schema.marks.origin);
        blocks.push({ type: "text", origin: (mark?.attrs.origin ?? "user") as Origin, text: child.text! });
      } else if (child.type === schema.nodes.illustration) {
        blocks.push(child.attrs.block);
      }
    });
  });
  return normalised(blocks);
}
