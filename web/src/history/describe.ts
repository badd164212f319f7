// What the history panel says about a node: its kind in words and the text it added, read from
// its own ops (cheap at any size: no text is rebuilt to list a branch).
import { isText, type HistoryNode } from "../documents/content";

export const KIND_LABELS: Record<string, string> = {
  root: "Opening", generation: "Continuation", retry: "Retry", edit: "Edit", illustration: "Illustration",
};

const PREVIEW_CHARS = 90;

export function kindLabel(node: HistoryNode): string {
  return KIND_LABELS[node.kind] ?? node.kind;
}

/** The text the node inserted (its end, where a long insert is cut), or what it removed. */
export function nodePreview(node: HistoryNode): string {
  let inserted = "";
  let removed = 0;
  for (const op of node.ops) {
    for (const block of op.insert ?? []) inserted += isText(block) ? block.text : "[illustration]";
    for (const block of op.delete ?? []) removed += isText(block) ? Array.from(block.text).length : 1;
  }
  inserted = inserted.replace(/\s+/g, " ").trim();
  if (inserted) return inserted.length > PREVIEW_CHARS ? `…${inserted.slice(-PREVIEW_CHARS)}` : inserted;
  if (removed) return `removed ${removed} character${removed === 1 ? "" : "s"}`;
  return "no change";
}

export function nodeTime(node: HistoryNode): string {
  return node.created_at ? new Date(node.created_at).toLocaleString() : "";
}
