// The editor's side panels, one shown at a time behind a tab list (arrow keys move between the
// tabs, as the ARIA tabs pattern has it): Memory, Author's note, Lorebook, Generation, Context.
import { useState } from "preact/hooks";
import type { Api } from "../api/client";
import type { StoryJson } from "../documents/story";
import { ContextViewer, type ContextReport } from "./ContextViewer";
import { GenerationPanel } from "./GenerationPanel";
import { LorebookPanel } from "./LorebookPanel";
import type { LorebookDoc } from "./model";
import { TextPartPanel } from "./TextPartPanel";

export type PanelName = "memory" | "authors_note" | "lorebook" | "generation" | "context" | "image";
const TABS: { name: PanelName; label: string }[] = [
  { name: "memory", label: "Memory" }, { name: "authors_note", label: "Author's note" }, { name: "lorebook", label: "Lorebook" },
  { name: "generation", label: "Generation" }, { name: "context", label: "Context" }, { name: "image", label: "Illustrate" },
];

export function SidePanels(props: {
  api: Api; story: StoryJson; update(apply: (story: any) => void): void; readOnly: boolean; storyText(): string;
  lorebook: LorebookDoc | null; editLorebook(apply: (book: StoryJson) => void): Promise<void>; lorebookState: string;
  report: ContextReport | null; tab: PanelName; setTab(tab: PanelName): void;
  /** The image panel (image/ImagePanel.tsx), made by the editor, which owns the text it inserts into. */
  imagePanel(): preact.ComponentChildren;
}) {
  const { api, story, update, readOnly, tab, setTab } = props;
  const [, rerender] = useState(0);
  const change = (apply: (story: any) => void) => {
    update(apply);
    rerender((n) => n + 1);
  };
  const keyNav = (event: KeyboardEvent, index: number) => {
    const step = event.key === "ArrowRight" || event.key === "ArrowDown" ? 1 : event.key === "ArrowLeft" || event.key === "ArrowUp" ? -1 : 0;
    if (!step) return;
    event.preventDefault();
    const next = TABS[(index + step + TABS.length) % TABS.length];
    setTab(next.name);
    document.getElementById(`tab-${next.name}`)?.focus();
  };
  return (
    <aside class="side-panels" aria-label="Story panels">
      <div role="tablist" aria-label="Panels" class="panel-tabs">
        {TABS.map((t, i) => (
          <button type="button" role="tab" id={`tab-${t.name}`} aria-selected={tab === t.name} aria-controls={`panel-${t.name}`}
            tabIndex={tab === t.name ? 0 : -1} onClick={() => setTab(t.name)} onKeyDown={(e) => keyNav(e, i)}>{t.label}</button>
        ))}
      </div>
      <div role="tabpanel" id={`panel-${tab}`} aria-labelledby={`tab-${tab}`} class="panel-body" tabIndex={0}>
        {tab === "memory" && <TextPartPanel api={api} part="memory" label="Memory" story={story} update={change} readOnly={readOnly}
          hint="Facts the model should always know, placed at the top of the context by default." />}
        {tab === "authors_note" && <TextPartPanel api={api} part="authors_note" label="Author's note" story={story} update={change} readOnly={readOnly}
          hint="Style or direction for what comes next, placed a few lines above the end by default." />}
        {tab === "lorebook" && <LorebookPanel book={props.lorebook} storyText={props.storyText} edit={props.editLorebook}
          readOnly={readOnly} state={props.lorebookState} />}
        {tab === "generation" && <GenerationPanel api={api} story={story} update={change} readOnly={readOnly} />}
        {tab === "context" && <ContextViewer report={props.report} />}
        {tab === "image" && props.imagePanel()}
      </div>
    </aside>
  );
}
