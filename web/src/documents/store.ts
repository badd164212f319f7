// Stories on the server as the SDK stores them (docs/formats.md, section 5;
// sdk/fabula_sdk/documents/store.py): open = story, snapshot, committed segments; save = a new
// segment (create only) then the story committing it; a refused write reloads and puts this
// browser's unsaved nodes back as new branches, so a stale save never loses text.
import { ConflictError, ApiError } from "../api/client";
import type { Vault } from "../api/vault";
import { canonicalJson, clone, DocumentError, NewerFormatError, parseJson, type Json } from "./json";
import { checkNodes, History, normalised, type Block, type HistoryNode } from "./content";
import { checkWritable, defaultStory, preview, readStory, utcNow, type StoryJson } from "./story";

export const CONTENT_VERSION = 2;
const SAVE_ATTEMPTS = 8;
const OPEN_ATTEMPTS = 4;

export const newId = (): string => crypto.randomUUID();
export const segmentId = (contentId: string, seq: number): string => `${contentId}_h${seq}`;

export interface StoryDoc {
  id: string;
  story: StoryJson;
  newer: boolean;
  history: History;
  changeIndex: number;
  contentChangeIndex: number;
  segmentsFolded: number;
  contentExtra: StoryJson;
  /** The story as last read or saved: the fields changed since are this browser's own. */
  base: StoryJson;
}

export interface LibraryEntry {
  id: string;
  story: StoryJson;
  changeIndex: number;
}

interface Snapshot {
  blocks: Block[];
  nodes: HistoryNode[];
  snapshotNode: number;
  head: number;
  segmentsFolded: number;
  extra: StoryJson;
  version: number;
}

const KNOWN_CONTENT = ["format", "version", "blocks", "nodes", "snapshot_node", "head", "segments_folded"];

export function readSnapshot(data: Json, what: string): Snapshot {
  const raw = data as any;
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new DocumentError(`${what}: must be a JSON object`);
  if (!("format" in raw) && raw.version === 1) {
    if (typeof raw.text !== "string") throw new DocumentError(`${what}.text: a version-1 content needs its text`);
    const blocks: Block[] = raw.text ? [{ type: "text", origin: "user", text: raw.text }] : [];
    const root: HistoryNode = { id: 0, parent: null, kind: "root", created_at: 0, ops: blocks.length ? [{ at: 0, insert: blocks }] : [] };
    const { version: _v, text: _t, ...extra } = raw;
    return { blocks, nodes: [root], snapshotNode: 0, head: 0, segmentsFolded: 0, extra, version: CONTENT_VERSION };
  }
  if (raw.format !== "fabula-story-content") throw new DocumentError(`${what}.format: must be "fabula-story-content"`);
  if (!Array.isArray(raw.blocks)) throw new DocumentError(`${what}.blocks: must be a list of blocks`);
  const nodes = checkNodes(raw.nodes, `${what}.nodes`);
  nodes.forEach((node, i) => {
    if (node.id !== i) throw new DocumentError(`${what}.nodes[${i}].id: must be ${i}`);
    if (i > 0 && (node.parent === null || node.parent >= i)) throw new DocumentError(`${what}.nodes[${i}].parent: must be an earlier node`);
  });
  const extra: StoryJson = {};
  for (const [k, v] of Object.entries(raw)) if (!KNOWN_CONTENT.includes(k)) extra[k] = v as Json;
  return { blocks: normalised(raw.blocks), nodes, snapshotNode: raw.snapshot_node ?? 0, head: raw.head ?? 0,
    segmentsFolded: raw.segments_folded ?? 0, extra, version: raw.version };
}

/** The snapshot JSON of a whole history (blocks at the head). */
export function snapshotJson(history: History, segmentsFolded: number, extra: StoryJson = {}): Json {
  return { ...extra, format: "fabula-story-content", version: CONTENT_VERSION, blocks: history.blocks as Json,
    nodes: history.nodes as unknown as Json, snapshot_node: history.head, head: history.head, segments_folded: segmentsFolded };
}

export class StoryStore {
  constructor(readonly vault: Vault) {}

  async list(): Promise<LibraryEntry[]> {
    const metas = await this.vault.api.listObjects("stories");
    return Promise.all(metas.map(async (meta) => {
      const stored = await this.vault.getText("stories", meta.id);
      return { id: meta.id, story: readStory(parseJson(stored.text), `stories/${meta.id}`).story, changeIndex: stored.changeIndex };
    }));
  }

  async open(id: string): Promise<StoryDoc> {
    for (let attempt = 0; attempt < OPEN_ATTEMPTS; attempt++) {
      const stored = await this.vault.getText("stories", id);
      const { story, newer } = readStory(parseJson(stored.text), `stories/${id}`);
      const contentId = story.content_id as string;
      const content = await this.vault.getText("storycontent", contentId);
      const snapshot = readSnapshot(parseJson(content.text), `storycontent/${contentId}`);
      const committed = story.history_segments as number;
      if (snapshot.segmentsFolded > committed) continue; // compacted after the story was read
      const history = new History(snapshot.nodes, snapshot.blocks, snapshot.snapshotNode);
      let head = snapshot.head;
      let newest = snapshot.version;
      try {
        for (let seq = snapshot.segmentsFolded; seq < committed; seq++) {
          const segment = await this.segment(contentId, seq);
          history.appendStored(segment.nodes, `storycontent/${segmentId(contentId, seq)}.nodes`);
          head = segment.head;
          newest = Math.max(newest, segment.version);
        }
      } catch (error) {
        if (error instanceof ApiError && error.status === 404 && attempt < OPEN_ATTEMPTS - 1) continue;
        throw error;
      }
      if (!(head >= 0 && head < history.nodes.length)) throw new DocumentError(`history head ${head} is not a node`);
      history.move(head);
      history.markSaved();
      return { id, story, newer: newer || newest > CONTENT_VERSION, history, changeIndex: stored.changeIndex,
        contentChangeIndex: content.changeIndex, segmentsFolded: snapshot.segmentsFolded, contentExtra: snapshot.extra,
        base: clone(story) };
    }
    throw new ConflictError(409, "ABORTED", `stories/${id} kept changing while it was read; try again`);
  }

  private async segment(contentId: string, seq: number): Promise<{ nodes: HistoryNode[]; head: number; version: number }> {
    const what = `storycontent/${segmentId(contentId, seq)}`;
    const raw = parseJson((await this.vault.getText("storycontent", segmentId(contentId, seq))).text) as any;
    if (raw?.format !== "fabula-history-segment") throw new DocumentError(`${what}.format: must be "fabula-history-segment"`);
    if (raw.content_id !== contentId || raw.seq !== seq) throw new DocumentError(`${what}: holds segment ${raw.seq} of ${raw.content_id}`);
    if (!Number.isInteger(raw.head)) throw new DocumentError(`${what}.head: must be an integer`);
    return { nodes: checkNodes(raw.nodes, `${what}.nodes`), head: raw.head, version: raw.version };
  }

  /** A new story stored at once; `blocks` are the root's (the opening text). */
  async create(title: string, blocks: Block[] = [], from?: StoryJson): Promise<StoryDoc> {
    const id = newId();
    const contentId = newId();
    const story = from ? { ...clone(from), content_id: contentId, history_segments: 0 } : defaultStory(contentId);
    story.title = title;
    story.created_at = utcNow();
    return this.createWith(id, story, History.fresh(blocks));
  }

  /** A copy with its whole history (a new id and content id; one snapshot holds every node). */
  async duplicate(id: string, title: string): Promise<StoryDoc> {
    const source = await this.open(id);
    const contentId = newId();
    const story: StoryJson = { ...clone(source.story), content_id: contentId, history_segments: 0, title, created_at: utcNow() };
    const nodes = source.history.nodes.map((n) => clone(n as unknown as Json) as unknown as HistoryNode);
    const history = new History(nodes, source.history.blocks, source.history.head);
    return this.createWith(newId(), story, history);
  }

  private async createWith(id: string, story: StoryJson, history: History): Promise<StoryDoc> {
    const contentId = story.content_id as string;
    await this.vault.ensureKeys([{ type: "stories", id }, { type: "storycontent", id: contentId }]);
    this.stamp(story, history);
    const content = await this.vault.put("storycontent", contentId, canonicalJson(snapshotJson(history, 0)), 0);
    const meta = await this.vault.put("stories", id, canonicalJson(story), 0);
    history.markSaved();
    return { id, story, newer: false, history, changeIndex: meta.changeIndex, contentChangeIndex: content.changeIndex,
      segmentsFolded: 0, contentExtra: {}, base: clone(story) };
  }

  private stamp(story: StoryJson, history: History): void {
    story.updated_at = utcNow();
    story.created_at = story.created_at || story.updated_at;
    story.preview = preview(history.text);
    story.version = 2;
  }

  /** Store what changed; after a conflict `doc` holds the merged state (its nodes as new branches). */
  async save(doc: StoryDoc): Promise<{ doc: StoryDoc; conflicted: boolean }> {
    checkWritable(doc.story, doc.newer, `stories/${doc.id}`);
    let conflicted = false;
    for (let attempt = 0; attempt < SAVE_ATTEMPTS; attempt++) {
      try {
        await this.append(doc);
        return { doc, conflicted };
      } catch (error) {
        if (!(error instanceof ConflictError)) throw error;
        conflicted = true;
        doc = await this.mergeStored(doc);
      }
    }
    throw new ConflictError(409, "ABORTED", `stories/${doc.id} kept changing during the save; try again`);
  }

  private async append(doc: StoryDoc): Promise<void> {
    const seq = doc.story.history_segments as number;
    const contentId = doc.story.content_id as string;
    let committed = seq;
    const history = doc.history;
    if (history.unsaved) {
      const segment = { format: "fabula-history-segment", version: CONTENT_VERSION, content_id: contentId, seq,
        nodes: history.nodes.slice(history.savedNodes) as unknown as Json, head: history.head };
      const bytes = canonicalJson(segment);
      try {
        await this.vault.put("storycontent", segmentId(contentId, seq), bytes, 0);
      } catch (error) {
        // The segment exists: ours from an earlier attempt of this save is fine; else reload.
        if (!(error instanceof ConflictError)) throw error;
        const existing = await this.vault.getText("storycontent", segmentId(contentId, seq)).catch(() => null);
        if (!existing || canonicalJson(parseJson(existing.text)) !== bytes) throw error;
      }
      committed = seq + 1;
    }
    const story = { ...doc.story };
    this.stamp(story, history);
    story.history_segments = committed;
    const meta = await this.vault.put("stories", doc.id, canonicalJson(story), doc.changeIndex);
    // The written fields go onto the object the editor holds rather than replacing it: a field the
    // writer changed while this write was in flight (a panel's, the title) stays, for the next save.
    for (const key of ["created_at", "updated_at", "preview", "version", "history_segments"]) doc.story[key] = story[key];
    doc.changeIndex = meta.changeIndex;
    history.markSaved();
    doc.base = clone(story);
  }

  /** After a refused write: reload, adopt an uncommitted segment, put this browser's unsaved nodes
   * (as new branches) and its changed story fields on top. */
  private async mergeStored(doc: StoryDoc): Promise<StoryDoc> {
    const stored = await this.open(doc.id);
    const contentId = stored.story.content_id as string;
    const seq = stored.story.history_segments as number;
    let orphan: { nodes: HistoryNode[]; head: number } | null = null;
    try {
      orphan = await this.segment(contentId, seq);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) throw error;
    }
    if (orphan) {
      stored.history.appendStored(orphan.nodes, `storycontent/${segmentId(contentId, seq)}.nodes`);
      stored.history.markSaved();
      stored.story.history_segments = seq + 1; // committed by the next story write
    }
    const merged = sameNodes(stored.history, doc.history) ? stored.history : doc.history.rebasedOnto(stored.history);
    if (merged === stored.history && doc.history.head !== doc.history.savedHead) merged.move(doc.history.head);
    const story = clone(stored.story);
    for (const key of new Set([...Object.keys(doc.story), ...Object.keys(doc.base)])) {
      if (["history_segments", "content_id", "updated_at", "preview", "version"].includes(key)) continue;
      if (canonicalJson(doc.story[key] ?? null) !== canonicalJson(doc.base[key] ?? null)) story[key] = clone(doc.story[key]);
    }
    story.history_segments = stored.story.history_segments;
    return { ...stored, story, history: merged, base: clone(stored.story) };
  }

  async remove(id: string): Promise<void> {
    const stored = await this.vault.getText("stories", id);
    const { story } = readStory(parseJson(stored.text), `stories/${id}`);
    const contentId = story.content_id as string;
    await this.vault.delete("stories", id, stored.changeIndex);
    const pattern = new RegExp(`^${contentId.replace(/[-]/g, "\\-")}_h\\d+$`);
    for (const meta of await this.vault.api.listObjects("storycontent")) {
      if (pattern.test(meta.id)) await this.vault.delete("storycontent", meta.id).catch(ignoreMissing);
    }
    await this.vault.delete("storycontent", contentId).catch(ignoreMissing);
  }
}

function ignoreMissing(error: unknown): void {
  if (!(error instanceof ApiError && error.status === 404)) throw error;
}

/** Whether `stored` already holds every unsaved node of `local` (another device committed them). */
function sameNodes(stored: History, local: History): boolean {
  const pending = local.nodes.slice(local.savedNodes);
  if (!pending.length) return true;
  return pending.every((node) => {
    const other = stored.nodes[node.id];
    return other !== undefined && canonicalJson(other as unknown as Json) === canonicalJson(node as unknown as Json);
  });
}

export { NewerFormatError };
