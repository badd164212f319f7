// The editor screen: the story text (AI text marked), Send (Ctrl+Enter) streaming the continuation
// token by token, Stop, and autosave with a visible saved / saving / conflict state. Every change
// becomes a history node (docs/formats.md, section 4) and is saved as the SDK saves.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { generateStream } from "../api/generate";
import type { Vault } from "../api/vault";
import { diffOps, isContinuation, plainText } from "../documents/content";
import { HistoryPanel } from "../history/HistoryPanel";
import { toPlain, type Json } from "../documents/json";
import { StoryStore, type StoryDoc } from "../documents/store";
import { str, tags } from "../documents/story";
import { StoryEditor } from "../editor/view";

/** Quiet time after the last keystroke before the story is saved. */
const AUTOSAVE_DELAY_MS = 800;
const DEFAULT_LENGTH = 40;

type SaveState = "saved" | "unsaved" | "saving" | "conflict" | "error";
const SAVE_LABELS: Record<SaveState, string> = {
  saved: "Saved", unsaved: "Unsaved changes", saving: "Saving…",
  conflict: "Saved; another device had changed this story, so your version is kept as a branch", error: "Not saved",
};

/** The generation request for the story at its head (POST /ai/generate-stream, docs/text.md). */
export function generationBody(doc: StoryDoc, storyText: string): unknown {
  const story = doc.story as any;
  const settings = story.settings ?? {};
  const sampling = Object.fromEntries(Object.entries(settings.sampling ?? {}).filter(([, v]) => v !== null));
  return {
    model: settings.text_model ?? "",
    preset: settings.service_preset ?? "",
    context: {
      story: storyText,
      memory: story.memory?.text ?? "",
      authors_note: story.authors_note?.text ?? "",
      memory_config: toPlain(story.memory?.context_config),
      authors_note_config: toPlain(story.authors_note?.context_config),
      story_config: toPlain(story.story_config),
    },
    ...(Object.keys(sampling).length ? { sampling: toPlain(sampling as Json) } : {}),
    max_new_tokens: settings.max_new_tokens ?? DEFAULT_LENGTH,
    ...(settings.min_new_tokens !== null && settings.min_new_tokens !== undefined ? { min_new_tokens: settings.min_new_tokens } : {}),
    stop_sequences: settings.stop_sequences ?? [],
    banned_strings: settings.banned_strings ?? [],
  };
}

export function EditorScreen({ vault, storyId, onBack }: { vault: Vault; storyId: string; onBack(): void }) {
  const store = useMemo(() => new StoryStore(vault), [vault]);
  const mount = useRef<HTMLDivElement>(null);
  const editor = useRef<StoryEditor | null>(null);
  const doc = useRef<StoryDoc | null>(null);
  const timer = useRef<number | undefined>(undefined);
  const saving = useRef<Promise<void>>(Promise.resolve());
  const storyDirty = useRef(false);
  const abort = useRef<AbortController | null>(null);
  const [loaded, setLoaded] = useState(false);
  const [title, setTitle] = useState("");
  const [tagText, setTagText] = useState("");
  const [length, setLength] = useState(DEFAULT_LENGTH);
  const [saveState, setSaveStateLater] = useState<SaveState>("saved");
  const status = useRef<HTMLParagraphElement>(null);
  // The attribute changes at once (not at the next render), so "saved" is never shown stale.
  const setSaveState = (state: SaveState) => {
    if (status.current) status.current.dataset.state = state;
    setSaveStateLater(state);
  };
  const [generating, setGenerating] = useState(false);
  const [error, setError] = useState("");
  const [readOnly, setReadOnly] = useState(false);
  const [lastRun, setLastRun] = useState<"" | "stopped" | "done">("");
  const [runs, setRuns] = useState(0);
  // History (docs/web.md): Undo / Redo / Retry and restoring a branch move the history's head.
  const [historyVersion, setHistoryVersion] = useState(0);
  const bumpHistory = () => setHistoryVersion((v) => v + 1);
  const [showHistory, setShowHistory] = useState(false);
  const [showAllBranches, setShowAllBranches] = useState(false);

  const save = (): Promise<void> => {
    saving.current = saving.current.then(async () => {
      const current = doc.current;
      if (!current || !editor.current || current.newer) return;
      const ops = diffOps(current.history.blocks, editor.current.blocks);
      if (ops.length) current.history.commit(ops, "edit");
      if (!current.history.unsaved && !storyDirty.current) {
        setSaveState("saved");
        return;
      }
      setSaveState("saving");
      storyDirty.current = false;
      try {
        const { doc: saved, conflicted } = await store.save(current);
        doc.current = saved;
        if (conflicted) {
          // The merged tree may show other text at the head only if ours was already stored.
          const blocks = saved.history.blocks;
          if (JSON.stringify(blocks) !== JSON.stringify(editor.current.blocks)) editor.current.setBlocks(blocks);
        }
        setSaveState(conflicted ? "conflict" : timer.current === undefined ? "saved" : "unsaved");
        bumpHistory();
      } catch (e: any) {
        storyDirty.current = true;
        setSaveState("error");
        setError(`Saving failed: ${e?.message ?? e}`);
      }
    });
    return saving.current;
  };

  const scheduleSave = () => {
    setSaveState("unsaved");
    window.clearTimeout(timer.current);
    timer.current = window.setTimeout(() => {
      timer.current = undefined;
      save();
    }, AUTOSAVE_DELAY_MS);
  };

  const flush = async () => {
    window.clearTimeout(timer.current);
    timer.current = undefined;
    await save();
  };

  const send = async (retry = false) => {
    if (abort.current || !doc.current || !editor.current || doc.current.newer) return;
    setError("");
    await flush();
    const current = doc.current!;
    const replaced = current.history.nodes[current.history.head];
    if (retry && !isContinuation(replaced)) {
      setError("Retry replaces a continuation: the text shown does not end with one (use Send).");
      return;
    }
    // A retry continues the text the replaced continuation continued (its parent's).
    const context = retry ? plainText(current.history.blocksAt(replaced.parent!)) : current.history.text;
    if (retry) editor.current.setBlocks(current.history.blocksAt(replaced.parent!));
    setSaveState("unsaved");
    const controller = new AbortController();
    abort.current = controller;
    setGenerating(true);
    setLastRun("");
    editor.current.setEditable(false);
    let text = "";
    try {
      const outcome = await generateStream(vault.api, generationBody(current, context), {
        onPiece(piece) {
          text += piece;
          editor.current?.appendGenerated(piece);
        },
      }, controller.signal);
      setLastRun(outcome.stopped ? "stopped" : "done");
    } catch (e: any) {
      setError(`The generation failed: ${e?.message ?? e}`);
    } finally {
      abort.current = null;
      setGenerating(false);
      setRuns((n) => n + 1);
      editor.current?.setEditable(true);
    }
    if (text) {
      if (retry) current.history.retry(text);
      else current.history.generate(text);
    } else if (retry) editor.current?.setBlocks(current.history.blocks); // nothing came: the replaced text stays
    bumpHistory();
    await save();
  };

  /** Move the history's head (undo, redo, restore) after storing the typing in progress. */
  const moveHead = async (move: (doc: StoryDoc) => void) => {
    if (abort.current || !doc.current || !editor.current || doc.current.newer) return;
    setError("");
    await flush();
    const current = doc.current!;
    try {
      move(current);
    } catch (e: any) {
      setError(e?.message ?? String(e));
      return;
    }
    editor.current.setBlocks(current.history.blocks);
    bumpHistory();
    await save();
  };
  const undo = () => moveHead((d) => d.history.undo());
  const redo = () => moveHead((d) => d.history.redo());
  const restore = (id: number) => moveHead((d) => d.history.checkout(id));


  const stop = () => abort.current?.abort();

  useEffect(() => {
    let editorInstance: StoryEditor | null = null;
    store.open(storyId).then((opened) => {
      doc.current = opened;
      setTitle(str(opened.story, "title"));
      setTagText(tags(opened.story).join(", "));
      setLength((opened.story.settings as any)?.max_new_tokens ?? DEFAULT_LENGTH);
      setReadOnly(opened.newer);
      editorInstance = new StoryEditor(mount.current!, opened.history.blocks, {
        label: "Story text", onChange: scheduleSave, onSend: () => void send(),
        onUndo: () => void undo(), onRedo: () => void redo(),
      });
      if (opened.newer) editorInstance.setEditable(false);
      editor.current = editorInstance;
      setLoaded(true);
      bumpHistory();
    }).catch((e) => setError(`This story could not be opened: ${e?.message ?? e}`));
    const beforeUnload = (event: BeforeUnloadEvent) => {
      if (timer.current !== undefined) event.preventDefault();
    };
    window.addEventListener("beforeunload", beforeUnload);
    return () => {
      window.removeEventListener("beforeunload", beforeUnload);
      abort.current?.abort();
      if (timer.current !== undefined) void flush();
      editorInstance?.destroy();
    };
  }, [storyId]);

  const setStoryField = (apply: (story: any) => void) => {
    if (!doc.current) return;
    apply(doc.current.story);
    storyDirty.current = true;
    scheduleSave();
  };

  const back = async () => {
    await flush();
    onBack();
  };

  // Read afresh on each render; historyVersion changes whenever the history does.
  const history = doc.current?.history;
  const headNode = history?.nodes[history.head];
  const canUndo = !!headNode && headNode.parent !== null;
  const canRedo = !!history && history.childrenOf(history.head).length > 0;
  const canRetry = !!headNode && isContinuation(headNode);

  return (
    <main class="editor">
      <nav class="bar" aria-label="Story">
        <button type="button" onClick={back}>← Library</button>
        <button type="button" aria-expanded={showHistory} aria-controls="history-panel"
          onClick={() => setShowHistory(!showHistory)} disabled={!loaded}>History</button>
        <p ref={status} class="save-state" role="status" aria-live="polite" data-state={saveState}>{SAVE_LABELS[saveState]}</p>
      </nav>
      <h1 class="visually-hidden">Story editor</h1>
      {readOnly && <p class="error" role="alert">This story was written by a newer client: it is shown read-only.</p>}
      <div class="story-fields">
        <label>Title <input name="title" value={title} disabled={!loaded || readOnly}
          onInput={(e) => { const v = (e.target as HTMLInputElement).value; setTitle(v); setStoryField((s) => (s.title = v)); }} /></label>
        <label>Tags <input name="tags" value={tagText} disabled={!loaded || readOnly} placeholder="comma, separated"
          onInput={(e) => {
            const v = (e.target as HTMLInputElement).value;
            setTagText(v);
            setStoryField((s) => (s.tags = v.split(",").map((t) => t.trim()).filter(Boolean)));
          }} /></label>
        <label>Output length (tokens) <input name="length" type="number" min={1} max={2048} value={length} disabled={!loaded || readOnly}
          onInput={(e) => {
            const v = Number((e.target as HTMLInputElement).value);
            if (Number.isInteger(v) && v >= 1) {
              setLength(v);
              setStoryField((s) => (s.settings.max_new_tokens = v));
            }
          }} /></label>
      </div>
      <div class="legend" aria-hidden="true"><span class="origin-ai">AI text</span> <span class="origin-edit">edited AI text</span> <span>your text</span></div>
      <div id="history-panel">
        {showHistory && doc.current && (
          <HistoryPanel history={doc.current.history} version={historyVersion} disabled={generating || readOnly}
            onRestore={(id) => void restore(id)} onClose={() => setShowHistory(false)}
            showAll={showAllBranches} onShowAll={() => setShowAllBranches(true)} />
        )}
      </div>
      <div ref={mount} class="story-mount" />
      {!loaded && !error && <p role="status">Decrypting the story…</p>}
      <div class="send-bar">
        <button type="button" class="primary" onClick={() => void send()} disabled={!loaded || generating || readOnly}
          aria-keyshortcuts="Control+Enter">Send <kbd>Ctrl+Enter</kbd></button>
        <button type="button" onClick={() => void send(true)} disabled={!loaded || generating || readOnly || !canRetry}>Retry</button>
        <button type="button" onClick={stop} disabled={!generating}>Stop</button>
        <button type="button" onClick={() => void undo()} disabled={!loaded || generating || readOnly || !canUndo}
          aria-keyshortcuts="Control+Z">Undo</button>
        <button type="button" onClick={() => void redo()} disabled={!loaded || generating || readOnly || !canRedo}
          aria-keyshortcuts="Control+Y">Redo</button>
        <span class="gen-state" role="status" data-generating={generating ? "yes" : "no"} data-last={lastRun} data-runs={runs}>
          {generating ? "Writing…" : lastRun === "stopped" ? "Stopped." : ""}</span>
      </div>
      {error && <p class="error" role="alert">{error}</p>}
    </main>
  );
}
