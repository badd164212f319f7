// The story editor: a ProseMirror view over the text at the history's head. Typed text gets its
// origin here (docs/formats.md, section 4): replacing or cutting into AI or edited text makes
// `edit` text, text typed anywhere else is `user`; generated text is inserted as `ai`.
import { baseKeymap } from "prosemirror-commands";
import { keymap } from "prosemirror-keymap";
import type { Node as PMNode } from "prosemirror-model";
import { EditorState, Plugin, Selection, type Transaction } from "prosemirror-state";
import { EditorView, type NodeView } from "prosemirror-view";
import type { Block } from "../documents/content";
import { blocksToDoc, docToBlocks } from "./convert";
import { schema } from "./schema";

const GENERATED = "fabula-generated";
const REPLACED = "fabula-replace";
export const TRANSACTION_MARK = "fabula:transaction";

function isAiLike(node: PMNode | null | undefined): boolean {
  const origin = node?.marks.find((m) => m.type === schema.marks.origin)?.attrs.origin;
  return origin === "ai" || origin === "edit";
}

/** Gives typed and pasted text its origin mark. */
function originPlugin(): Plugin {
  return new Plugin({
    appendTransaction(transactions, _old, state) {
      const ranges: { from: number; to: number; edit: boolean }[] = [];
      transactions.forEach((tr, t) => {
        if (!tr.docChanged || tr.getMeta(GENERATED) || tr.getMeta(REPLACED)) return;
        tr.steps.forEach((step, i) => {
          const before = tr.docs[i];
          step.getMap().forEach((oldStart, oldEnd, newStart, newEnd) => {
            let edit = false;
            before.nodesBetween(oldStart, oldEnd, (node) => {
              if (node.isText && isAiLike(node)) edit = true;
            });
            const $at = before.resolve(oldStart);
            if (isAiLike($at.nodeBefore) && isAiLike(before.resolve(oldEnd).nodeAfter)) edit = true;
            let from = newStart, to = newEnd;
            for (let j = i + 1; j < tr.steps.length; j++) {
              from = tr.steps[j].getMap().map(from, -1);
              to = tr.steps[j].getMap().map(to, 1);
            }
            for (const later of transactions.slice(t + 1)) {
              from = later.mapping.map(from, -1);
              to = later.mapping.map(to, 1);
            }
            if (to > from) ranges.push({ from, to, edit });
          });
        });
      });
      if (!ranges.length) return null;
      const tr = state.tr;
      for (const { from, to, edit } of ranges) {
        const origin = schema.marks.origin;
        state.doc.nodesBetween(from, to, (node, pos) => {
          if (node.isText) {
            const start = Math.max(from, pos), end = Math.min(to, pos + node.nodeSize);
            if (edit || isAiLike(node)) tr.addMark(start, end, origin.create({ origin: "edit" }));
            else tr.removeMark(start, end, origin);
          } else if (node.type === schema.nodes.paragraph && pos > from && pos <= to) {
            tr.setNodeMarkup(pos, undefined, { brk: edit ? "edit" : "user" });
          }
        });
      }
      return tr.docChanged ? tr : null;
    },
  });
}

export interface StoryEditorOptions {
  onChange(): void;
  onSend(): void;
  /** Undo / redo move the story's history head (generations and edits alike, as NovelAI does). */
  onUndo(): void;
  onRedo(): void;
  label: string;
  /** How an illustration block is shown (image/illustration.ts); a text placeholder without it. */
  illustrationView?(block: Block): NodeView;
}

export class StoryEditor {
  readonly view: EditorView;

  constructor(mount: HTMLElement, blocks: Block[], private options: StoryEditorOptions) {
    this.view = new EditorView(mount, {
      state: this.freshState(blocks),
      nodeViews: options.illustrationView
        ? { illustration: (node) => options.illustrationView!(node.attrs.block as Block) } : {},
      attributes: { role: "textbox", "aria-multiline": "true", "aria-label": options.label, class: "story-text", spellcheck: "true" },
      dispatchTransaction: (tr: Transaction) => {
        this.view.updateState(this.view.state.apply(tr));
        // Lets a measurement (bench/web.py) see when a keystroke's transaction was applied; the
        // previous mark is cleared so the timeline never grows.
        performance.clearMarks(TRANSACTION_MARK);
        performance.mark(TRANSACTION_MARK);
        if (tr.docChanged && !tr.getMeta(GENERATED) && !tr.getMeta(REPLACED)) this.options.onChange();
      },
    });
  }

  private freshState(blocks: Block[]): EditorState {
    return EditorState.create({
      doc: blocksToDoc(blocks),
      plugins: [
        keymap({
          "Mod-Enter": () => (this.options.onSend(), true),
          "Mod-z": () => (this.options.onUndo(), true),
          "Mod-y": () => (this.options.onRedo(), true),
          "Shift-Mod-z": () => (this.options.onRedo(), true),
        }),
        keymap(baseKeymap),
        originPlugin(),
      ],
    });
  }

  get blocks(): Block[] {
    return docToBlocks(this.view.state.doc);
  }

  /** Show other text (another story, a reloaded head) without recording it as an edit. */
  setBlocks(blocks: Block[]): void {
    this.view.updateState(this.freshState(blocks));
  }

  /** Append generated text at the end, marked `ai`; not an edit of the writer's. */
  appendGenerated(text: string): void {
    const { state } = this.view;
    const end = state.doc.content.size - 1;
    const lines = text.split("\n");
    let tr = state.tr.setMeta(GENERATED, true).setMeta("addToHistory", false);
    let pos = end;
    lines.forEach((line, i) => {
      if (i > 0) {
        tr = tr.split(pos, 1, [{ type: schema.nodes.paragraph, attrs: { brk: "ai" } }]);
        pos += 2;
      }
      if (line) {
        tr = tr.insert(pos, schema.text(line, [schema.marks.origin.create({ origin: "ai" })]));
        pos += line.length;
      }
    });
    this.view.dispatch(tr);
  }

  /** The selected text, else the text of the paragraph the cursor is in (what to illustrate). */
  selectedText(): string {
    const { selection, doc } = this.view.state;
    if (!selection.empty) return doc.textBetween(selection.from, selection.to, "\n", " ");
    return selection.$from.parent.textContent;
  }

  /** Insert an illustration after the selection (or at the cursor); the caller records the change
   * as an `illustration` node (not an edit of the writer's). */
  insertIllustration(block: Block): void {
    const { state } = this.view;
    const node = schema.nodes.illustration.create({ block });
    this.view.dispatch(state.tr.insert(state.selection.to, node).setMeta(REPLACED, true));
  }

  /** Swap the illustration of `imageId` for another (an inpainted or re-run picture). */
  replaceIllustration(imageId: string, block: Block): boolean {
    const { state } = this.view;
    let found = -1;
    state.doc.descendants((node, pos) => {
      if (found < 0 && node.type === schema.nodes.illustration && node.attrs.block?.image_id === imageId) found = pos;
      return found < 0;
    });
    if (found < 0) return false;
    const node = schema.nodes.illustration.create({ block });
    this.view.dispatch(state.tr.replaceWith(found, found + 1, node).setMeta(REPLACED, true));
    return true;
  }

  setEditable(editable: boolean): void {
    this.view.setProps({ editable: () => editable });
  }

  focusEnd(): void {
    const { state } = this.view;
    this.view.focus();
    this.view.dispatch(state.tr.setSelection(Selection.atEnd(state.doc)).setMeta(REPLACED, true));
  }

  destroy(): void {
    this.view.destroy();
  }
}
