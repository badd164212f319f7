// The editor screen: the story text (AI text marked), Send (Ctrl+Enter) streaming the continuation
// token by token, Stop, and autosave with a visible saved / saving / conflict state. Every change
// becomes a history node (docs/formats.md, section 4) and is saved as the SDK saves.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { generateStream } from "../api/generate";
import type { Vault } from "../api/vault";
import { diffOps, isContinuation, plainText, type Block } from "../documents/content";
import { HistoryPanel } from "../history/HistoryPanel";
import type { Json } from "../documents/json";
import { StoryStore, type StoryDoc } from "../documents/store";
import { str, tags } from "../documents/story";
import { StoryEditor } from "../editor/view";
import { illustrationView } from "../image/illustration";
import { ImagePanel } from "../image/ImagePanel";
import { storeIllustration } from "../image/store";
import type { ContextReport } from "../panels/ContextViewer";
import { createLorebook, DEFAULT_LENGTH, generationBody, openLorebooks, saveLorebook, type LorebookDoc } from "../panels/model";
import { SidePanels, type PanelName } from "../panels/SidePanels";
import { ThemeToggle } from "../panels/ThemeToggle";
import { TokenCount } from "../panels/TokenCount";

/** Quiet time after the last keystroke before the story is saved. */
const AUTOSAVE_DELAY_MS = 800;

type SaveState = "saved" | "unsaved" | "saving" | "conflict" | "error";
const SAVE_LABELS: Record<SaveState, string> = {
  saved: "Saved", unsaved: "Unsaved changes", saving: "Saving…",
  conflict: "Saved; another device had changed this story, so your version is kept as a branch", error: "Not saved",
};

export function EditorScreen({ vault, storyId, onBack }: { vault: Vault; storyId: string; onBack(): void }) {
  const store = useMemo(() => new StoryStore(vault), [vault]);
  const mount = useRef<HTMLDivElement>(null);
  const editor = useRef<StoryEditor | null>(null);
  const doc = useRef<StoryDoc | null>(null);
  const timer = useRef<number | undefined>(undefined);
  const saving = useRef<Promise<void>>(Promise.resolve());
  const storyDirty = useRef(false);
  // Whether the writer changed the text since it was last compared with the history: only then is
  // the whole document turned into blocks and diffed (Send and undo flush first, and a save while
  // a continuation streams in must not take the streamed text for an edit).
  const textDirty = useRef(false);
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
  const [report, setReport] = useState<ContextReport | null>(null);
  // The story text whose tokens are counted: taken when the autosave's quiet moment comes, so a
  // keystroke never re-renders the screen.
  const [countedText, setCountedText] = useState("");
  const takeCountedText = () => setCountedText(editor.current ? plainText(editor.current.blocks) : "");
  const [tab, setTabNow] = useState<PanelName>("memory");
  // The image panel works on the passage selected (or the cursor's paragraph) when it was opened,
  // or on an illustration whose "Edit picture" was pressed.
  const [imageSource, setImageSource] = useState<{ block: Block | null; passage: string; key: number }>({ block: null, passage: "", key: 0 });
  const setTab = (next: PanelName) => {
    if (next === "image" && tab !== "image") {
      setImageSource((old) => ({ block: null, passage: editor.current?.selectedText() ?? "", key: old.key + 1 }));
    }
    setTabNow(next);
  };
  const lorebooks = useRef<LorebookDoc[]>([]);
  const [lorebookState, setLorebookState] = useState("saved");
  const [, setLorebookEdits] = useState(0);
  const lorebookTimer = useRef<number | undefined>(undefined);
  const lorebookSaving = useRef<Promise<void>>(Promise.resolve());

  const save = (): Promise<void> => {
    saving.current = saving.current.then(async () => {
      const current = doc.current;
      if (!current || !editor.current || current.newer) return;
      if (textDirty.current) {
        textDirty.current = false;
        const ops = diffOps(current.history.blocks, editor.current.blocks);
        if (ops.length) current.history.commit(ops, "edit");
      }
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
    if (status.current?.dataset.state !== "unsaved") setSaveState("unsaved");
    window.clearTimeout(timer.current);
    timer.current = window.setTimeout(() => {
      timer.current = undefined;
      takeCountedText();
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
    await flushLorebook();
    const current = doc.current!;
    const replaced = current.history.nodes[current.history.head];
    if (retry && !isContinuation(replaced)) {
      setError("Retry replaces a continuation: the text shown does not end with one (use Send).");
      return;
    }
    // A retry continues the text the replaced continuation continued (its parent's).
    const context = retry ? plainText(current.history.blocksAt(replaced.parent!)) : current.history.text;
    if (retry) editor.current.setBlocks(current.history.blocksAt(replaced.parent!));
    const controller = new AbortController();
    abort.current = controller;
    let text = "";
    // The request goes out first; the screen's own updates run while the server works on it.
    const streaming = generateStream(vault.api, generationBody(current, context, lorebooks.current), {
      onContext(context) {
        setReport(context as ContextReport);
      },
      onPiece(piece) {
        text += piece;
        editor.current?.appendGenerated(piece);
      },
    }, controller.signal);
    setSaveState("unsaved");
    setGenerating(true);
    setLastRun("");
    editor.current.setEditable(false);
    try {
      const outcome = await streaming;
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
    takeCountedText();
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
    store.open(storyId).then(async (opened) => {
      lorebooks.current = await openLorebooks(vault, opened.story);
      doc.current = opened;
      setTitle(str(opened.story, "title"));
      setTagText(tags(opened.story).join(", "));
      setLength((opened.story.settings as any)?.max_new_tokens ?? DEFAULT_LENGTH);
      setReadOnly(opened.newer);
      editorInstance = new StoryEditor(mount.current!, opened.history.blocks, {
        label: "Story text", onChange: () => { textDirty.current = true; scheduleSave(); }, onSend: () => void send(),
        onUndo: () => void undo(), onRedo: () => void redo(),
        illustrationView: illustrationView(vault, (block) => {
          setImageSource((old) => ({ block, passage: "", key: old.key + 1 }));
          setTabNow("image");
        }),
      });
      if (opened.newer) editorInstance.setEditable(false);
      editor.current = editorInstance;
      takeCountedText();
      setLoaded(true);
      bumpHistory();
    }).catch((e) => setError(`This story could not be opened: ${e?.message ?? e}`));
    const beforeUnload = (event: BeforeUnloadEvent) => {
      if (timer.current !== undefined || lorebookTimer.current !== undefined) event.preventDefault();
    };
    window.addEventListener("beforeunload", beforeUnload);
    return () => {
      window.removeEventListener("beforeunload", beforeUnload);
      abort.current?.abort();
      if (timer.current !== undefined) void flush();
      if (lorebookTimer.current !== undefined) void flushLorebook();
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
    await flushLorebook();
    onBack();
  };

  /** Store a picked picture and put it into the story as an `illustration` history node. */
  const insertIllustration = async (png: Uint8Array, caption: string, settings: Json, replaces: string | null) => {
    if (!doc.current || !editor.current || doc.current.newer) throw new Error("the story is not open for writing");
    await flush();
    const block = await storeIllustration(vault, png, caption, settings);
    if (!(replaces && editor.current.replaceIllustration(replaces, block))) editor.current.insertIllustration(block);
    const current = doc.current;
    const ops = diffOps(current.history.blocks, editor.current.blocks);
    if (ops.length) current.history.commit(ops, "illustration");
    bumpHistory();
    await save();
  };

  // The story's first lorebook is the one the panel edits; it is saved on its own (a debounced
  // write of the lorebook object), and created, then listed in the story, on the first change.
  const saveLorebooks = (): Promise<void> => {
    lorebookSaving.current = lorebookSaving.current.then(async () => {
      const book = lorebooks.current[0];
      if (!book) return;
      setLorebookState("saving");
      try {
        await saveLorebook(vault, book);
        setLorebookState("saved");
      } catch (e: any) {
        setLorebookState("error");
        setError(`Saving the lorebook failed: ${e?.message ?? e}`);
      }
    });
    return lorebookSaving.current;
  };
  const flushLorebook = async () => {
    if (lorebookTimer.current === undefined) return lorebookSaving.current;
    window.clearTimeout(lorebookTimer.current);
    lorebookTimer.current = undefined;
    await saveLorebooks();
  };
  const editLorebook = async (apply: (book: any) => void) => {
    if (!doc.current) return;
    if (!lorebooks.current.length) {
      const created = await createLorebook(vault, "");
      lorebooks.current = [created];
      setStoryField((s) => (s.lorebook_ids = [...(s.lorebook_ids ?? []), created.id]));
    }
    apply(lorebooks.current[0].book);
    setLorebookEdits((n) => n + 1);
    setLorebookState("unsaved");
    window.clearTimeout(lorebookTimer.current);
    lorebookTimer.current = window.setTimeout(() => {
      lorebookTimer.current = undefined;
      void saveLorebooks();
    }, AUTOSAVE_DELAY_MS);
  };

  // Read afresh on each render; historyVersion changes whenever the history does.
  const history = doc.current?.history;
  const headNode = history?.nodes[history.head];
  const canUndo = !!headNode && headNode.parent !== null;
  const canRedo = !!history && history.childrenOf(history.head).length > 0;
  const canRetry = !!headNode && isContinuation(headNode);

  return (
    <main class="editor with-panels">
      <div class="editor-main">
      <nav class="bar" aria-label="Story">
        <button type="button" onClick={back}>← Library</button>
        <button type="button" aria-expanded={showHistory} aria-controls="history-panel"
          onClick={() => setShowHistory(!showHistory)} disabled={!loaded}>History</button>
        <ThemeToggle />
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
        <button type="button" onClick={() => setTab("image")} disabled={!loaded || readOnly}
          title="Illustrate the selected passage, or the paragraph the cursor is in">Illustrate</button>
        <button type="button" onClick={() => void undo()} disabled={!loaded || generating || readOnly || !canUndo}
          aria-keyshortcuts="Control+Z">Undo</button>
        <button type="button" onClick={() => void redo()} disabled={!loaded || generating || readOnly || !canRedo}
          aria-keyshortcuts="Control+Y">Redo</button>
        <span class="gen-state" role="status" data-generating={generating ? "yes" : "no"} data-last={lastRun} data-runs={runs}>
          {generating ? "Writing…" : lastRun === "stopped" ? "Stopped." : ""}</span>
        {loaded && <TokenCount api={vault.api} text={countedText} label="Story" className="story-tokens"
          model={String((doc.current?.story.settings as any)?.text_model ?? "")} />}
      </div>
      {error && <p class="error" role="alert">{error}</p>}
      </div>
      {loaded && doc.current && (
        <SidePanels api={vault.api} story={doc.current.story} update={setStoryField} readOnly={readOnly}
          storyText={() => (editor.current ? plainText(editor.current.blocks) : "")}
          lorebook={lorebooks.current[0] ?? null} editLorebook={editLorebook} lorebookState={lorebookState}
          report={report} tab={tab} setTab={setTab}
          imagePanel={() => (
            <ImagePanel key={imageSource.key} vault={vault} story={doc.current!.story} updateStory={setStoryField}
              passage={imageSource.passage} source={imageSource.block} onInsert={insertIllustration}
              onClose={() => setTabNow("memory")} />
          )} />
      )}
    </main>
  );
}
