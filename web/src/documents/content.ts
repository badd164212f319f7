// Story content: blocks, ops and the history tree (docs/formats.md, sections 4-5), the same rules
// as sdk/fabula_sdk/documents/content.py. Offsets count code points. Blocks and nodes are kept as
// their JSON (unknown fields included) so that saving writes back what was read.
import { canonicalJson, clone, DocumentError, type Json } from "./json";

export type Origin = "user" | "ai" | "edit" | "prompt";
export const ORIGINS: Origin[] = ["user", "ai", "edit", "prompt"];
export type Block = { [key: string]: Json } & { type: string };
export type TextBlock = Block & { type: "text"; origin: Origin; text: string };

export interface Op {
  at: number;
  insert?: Block[];
  delete?: Block[];
}

export interface HistoryNode {
  id: number;
  parent: number | null;
  kind: string;
  created_at: number;
  ops: Op[];
  [extra: string]: Json | Op[] | undefined;
}

export const isText = (block: Block): block is TextBlock => block.type === "text";
/** A generation or a retry: what Retry replaces. */
export const isContinuation = (node: HistoryNode): boolean => (node.kind === "generation" || node.kind === "retry") && node.parent !== null;

export function cpLength(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

function cpSlice(text: string, start: number, end?: number): string {
  return Array.from(text).slice(start, end).join("");
}

export function blockLength(block: Block): number {
  return isText(block) ? cpLength(block.text) : 1;
}

export function blocksLength(blocks: Block[]): number {
  return blocks.reduce((n, b) => n + blockLength(b), 0);
}

export function plainText(blocks: Block[]): string {
  return blocks.filter(isText).map((b) => b.text).join("");
}

function extras(block: Block): string {
  const { type: _t, origin: _o, text: _x, ...rest } = block;
  return canonicalJson(rest as Json);
}

/** Adjacent same-origin text blocks merged, empty text blocks dropped (the canonical form). */
export function normalised(blocks: Block[]): Block[] {
  const out: Block[] = [];
  for (const block of blocks) {
    if (isText(block)) {
      if (!block.text) continue;
      const last = out[out.length - 1];
      if (last && isText(last) && last.origin === block.origin && extras(last) === extras(block)) {
        out[out.length - 1] = { ...last, text: last.text + block.text };
        continue;
      }
      out.push({ ...block });
    } else out.push(block);
  }
  return out;
}

function split(blocks: Block[], at: number, where: string): number {
  let position = 0;
  for (let index = 0; index < blocks.length; index++) {
    if (position === at) return index;
    const block = blocks[index];
    const length = blockLength(block);
    if (at < position + length) {
      if (!isText(block)) throw new DocumentError(`${where}: offset ${at} falls inside a non-text block`);
      const cut = at - position;
      blocks.splice(index, 1, { ...block, text: cpSlice(block.text, 0, cut) }, { ...block, text: cpSlice(block.text, cut) });
      return index + 1;
    }
    position += length;
  }
  if (position === at) return blocks.length;
  throw new DocumentError(`${where}: offset ${at} is past the end of the text (${position})`);
}

const canonicalBlocks = (blocks: Block[]) => canonicalJson(normalised(blocks) as Json);

export function applyOp(blocks: Block[], op: Op, where = "op"): Block[] {
  const work = [...blocks];
  const start = split(work, op.at, where);
  if (op.insert) {
    work.splice(start, 0, ...op.insert.map((b) => clone(b as Json) as Block));
  } else {
    const removed = op.delete ?? [];
    const end = split(work, op.at + blocksLength(removed), where);
    if (canonicalBlocks(work.slice(start, end)) !== canonicalBlocks(removed)) {
      throw new DocumentError(`${where}: the deleted text at offset ${op.at} is not the text there`);
    }
    work.splice(start, end - start);
  }
  return normalised(work);
}

export function applyOps(blocks: Block[], ops: Op[], where = "ops"): Block[] {
  ops.forEach((op, i) => (blocks = applyOp(blocks, op, `${where}[${i}]`)));
  return blocks;
}

export function invertOps(ops: Op[]): Op[] {
  return [...ops].reverse().map((op) => (op.insert ? { at: op.at, delete: op.insert } : { at: op.at, insert: op.delete }));
}

/** The ops replacing positions [start, end) of `blocks` with `replacement`. */
export function replaceOps(blocks: Block[], start: number, end: number, replacement: Block[]): Op[] {
  const ops: Op[] = [];
  if (end > start) {
    const work = [...blocks];
    const first = split(work, start, "replace");
    const last = split(work, end, "replace");
    ops.push({ at: start, delete: normalised(work.slice(first, last)) });
  }
  const inserted = normalised(replacement);
  if (inserted.length) ops.push({ at: start, insert: inserted });
  return ops;
}

const sameBlock = (x: Block, y: Block) => x === y || canonicalJson(x as Json) === canonicalJson(y as Json);

/** The smallest ops turning `before` into `after` (common leading and trailing positions kept).
 * Whole blocks the two share at either end are stepped over first, so typing into a long story
 * compares only the blocks around the change; the ops are the same as comparing every position. */
export function diffOps(before: Block[], after: Block[]): Op[] {
  let lead = 0, leadLength = 0;
  while (lead < before.length && lead < after.length && sameBlock(before[lead], after[lead])) leadLength += blockLength(before[lead++]);
  let trail = 0;
  while (trail < before.length - lead && trail < after.length - lead
    && sameBlock(before[before.length - 1 - trail], after[after.length - 1 - trail])) trail++;
  if (lead === 0 && trail === 0) return diffPositions(before, after);
  const a = before.slice(lead, before.length - trail), b = after.slice(lead, after.length - trail);
  if (trail > 0) {
    // A common run reaching the end of a middle part could continue into the trailing blocks,
    // which the whole comparison would count as prefix: then compare everything.
    const ap = positions(a), bp = positions(b);
    let prefix = 0;
    while (prefix < ap.length && prefix < bp.length && ap[prefix] === bp[prefix]) prefix++;
    if (prefix === ap.length || prefix === bp.length) return diffPositions(before, after);
  }
  return diffPositions(a, b).map((op) => ({ ...op, at: op.at + leadLength }));
}

function diffPositions(before: Block[], after: Block[]): Op[] {
  const a = positions(before), b = positions(after);
  let prefix = 0;
  while (prefix < a.length && prefix < b.length && a[prefix] === b[prefix]) prefix++;
  let suffix = 0;
  while (suffix < a.length - prefix && suffix < b.length - prefix && a[a.length - 1 - suffix] === b[b.length - 1 - suffix]) suffix++;
  if (prefix === a.length && prefix === b.length) return [];
  const work = [...after];
  const from = split(work, prefix, "diff");
  const to = split(work, b.length - suffix, "diff");
  return replaceOps(before, prefix, a.length - suffix, work.slice(from, to));
}

/** One key per position: a code point with its origin, or a whole non-text block. */
function positions(blocks: Block[]): string[] {
  const out: string[] = [];
  for (const block of blocks) {
    if (isText(block)) for (const ch of block.text) out.push(`${block.origin}\u0000${ch}`);
    else out.push(canonicalJson(block as Json));
  }
  return out;
}

export class History {
  private children = new Map<number, number[]>();
  private redoTo = new Map<number, number>();
  savedNodes: number;
  savedHead: number;

  constructor(readonly nodes: HistoryNode[], private blocksAtHead: Block[], private headId: number) {
    this.blocksAtHead = normalised(blocksAtHead);
    for (const node of nodes.slice(1)) this.link(node);
    this.savedNodes = nodes.length;
    this.savedHead = headId;
  }

  static fresh(blocks: Block[] = []): History {
    const first = normalised(blocks);
    const root: HistoryNode = { id: 0, parent: null, kind: "root", created_at: Date.now(), ops: first.length ? [{ at: 0, insert: first }] : [] };
    const history = new History([root], first, 0);
    history.savedNodes = 0;
    history.savedHead = -1;
    return history;
  }

  private link(node: HistoryNode): void {
    const list = this.children.get(node.parent!) ?? [];
    list.push(node.id);
    this.children.set(node.parent!, list);
  }

  appendStored(nodes: HistoryNode[], where: string): void {
    nodes.forEach((node, i) => {
      if (node.id !== this.nodes.length) throw new DocumentError(`${where}[${i}].id: must be ${this.nodes.length}, not ${node.id}`);
      if (node.parent === null || node.parent >= node.id || node.parent < 0) {
        throw new DocumentError(`${where}[${i}].parent: must be an earlier node, not ${node.parent}`);
      }
      this.nodes.push(node);
      this.link(node);
    });
  }

  get head(): number {
    return this.headId;
  }

  get blocks(): Block[] {
    return [...this.blocksAtHead];
  }

  get text(): string {
    return plainText(this.blocksAtHead);
  }

  get unsaved(): boolean {
    return this.nodes.length > this.savedNodes || this.headId !== this.savedHead;
  }

  childrenOf(id: number): number[] {
    return [...(this.children.get(id) ?? [])];
  }

  blocksAt(id: number): Block[] {
    return this.walk(this.blocksAtHead, this.headId, id);
  }

  commit(ops: Op[], kind: string, parent: number = this.headId): HistoryNode {
    this.move(parent);
    const blocks = applyOps(this.blocksAtHead, ops, `new node under ${parent}`);
    const node: HistoryNode = { id: this.nodes.length, parent, kind, created_at: Date.now(), ops };
    this.nodes.push(node);
    this.link(node);
    this.blocksAtHead = blocks;
    this.headId = node.id;
    return node;
  }

  generate(text: string): HistoryNode {
    return this.commit([{ at: blocksLength(this.blocksAtHead), insert: [{ type: "text", origin: "ai", text }] }], "generation");
  }

  /** Another continuation in place of the one at the head: a sibling under the same parent. */
  retry(text: string): HistoryNode {
    const current = this.nodes[this.headId];
    if (!isContinuation(current)) throw new Error(`retry needs a generation at the head, not a ${current.kind} node`);
    this.move(current.parent!);
    return this.commit([{ at: blocksLength(this.blocksAtHead), insert: [{ type: "text", origin: "ai", text }] }], "retry");
  }

  /** The tip of every branch. */
  leaves(): number[] {
    return this.nodes.filter((node) => !this.children.get(node.id)?.length).map((node) => node.id);
  }

  /** Node ids from the root to `id`. */
  path(id: number): number[] {
    const out: number[] = [];
    for (let at: number | null = id; at !== null; at = this.nodes[at].parent) out.push(at);
    return out.reverse();
  }

  /** The nodes sharing `id`'s parent, `id` included (a generation and its retries). */
  siblings(id: number): number[] {
    const parent = this.nodes[id].parent;
    return parent === null ? [id] : this.childrenOf(parent);
  }

  undo(): number {
    const parent = this.nodes[this.headId].parent;
    if (parent === null) throw new Error("nothing to undo: the head is the root");
    this.redoTo.set(parent, this.headId);
    this.move(parent);
    return this.headId;
  }

  redo(): number {
    const children = this.children.get(this.headId);
    if (!children?.length) throw new Error("nothing to redo: the head has no children");
    this.move(this.redoTo.get(this.headId) ?? children[children.length - 1]);
    return this.headId;
  }

  checkout(id: number): number {
    if (!(id >= 0 && id < this.nodes.length)) throw new Error(`no history node ${id}`);
    this.move(id);
    return this.headId;
  }

  move(target: number): void {
    if (target !== this.headId) {
      this.blocksAtHead = this.walk(this.blocksAtHead, this.headId, target);
      this.headId = target;
    }
  }

  private walk(blocks: Block[], source: number, target: number): Block[] {
    const up: number[] = [], down: number[] = [];
    let a = source, b = target;
    while (a !== b) {
      // A node's id is larger than its parent's, so the larger id is never the ancestor.
      if (a > b) {
        up.push(a);
        a = this.nodes[a].parent!;
      } else {
        down.push(b);
        b = this.nodes[b].parent!;
      }
    }
    for (const id of up) blocks = applyOps(blocks, invertOps(this.nodes[id].ops), `undoing history node ${id}`);
    for (const id of down.reverse()) blocks = applyOps(blocks, this.nodes[id].ops, `history node ${id}`);
    return blocks;
  }

  /** This history's unsaved nodes put after `stored`'s (a conflict: they become new branches),
   * renumbered; the head follows them. */
  rebasedOnto(stored: History): History {
    const offset = stored.nodes.length - this.savedNodes;
    const renumber = (id: number) => (id >= this.savedNodes ? id + offset : id);
    const merged = new History(stored.nodes.map((n) => n), stored.blocks, stored.head);
    merged.savedNodes = stored.savedNodes;
    merged.savedHead = stored.savedHead;
    const pending = this.nodes.slice(this.savedNodes).map((n) => ({ ...n, id: renumber(n.id), parent: renumber(n.parent!) }));
    merged.appendStored(pending, "local nodes");
    merged.move(renumber(this.headId));
    return merged;
  }

  markSaved(): void {
    this.savedNodes = this.nodes.length;
    this.savedHead = this.headId;
  }
}

export function checkNodes(value: Json | undefined, where: string): HistoryNode[] {
  if (!Array.isArray(value)) throw new DocumentError(`${where}: must be a list of nodes`);
  return value.map((raw, i) => {
    const node = raw as any;
    const path = `${where}[${i}]`;
    if (typeof node !== "object" || node === null || Array.isArray(node)) throw new DocumentError(`${path}: a node must be an object`);
    if (!Number.isInteger(node.id)) throw new DocumentError(`${path}.id: must be an integer`);
    if (node.parent !== null && !Number.isInteger(node.parent)) throw new DocumentError(`${path}.parent: must be an integer or null`);
    if (!Array.isArray(node.ops)) throw new DocumentError(`${path}.ops: must be a list of ops`);
    node.ops.forEach((op: any, j: number) => {
      if (!Number.isInteger(op?.at) || op.at < 0) throw new DocumentError(`${path}.ops[${j}].at: must be an offset >= 0`);
      if (Array.isArray(op.insert) === Array.isArray(op.delete)) throw new DocumentError(`${path}.ops[${j}]: needs insert or delete`);
    });
    return node as HistoryNode;
  });
}
