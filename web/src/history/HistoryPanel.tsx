// The history panel: every branch of the story's history tree (docs/formats.md, section 4), the
// path from the opening to the text shown, and the alternatives (retries) at the head; any of
// them can be restored. Restoring moves the head, which the next save stores: no node is made,
// so every text ever shown stays reachable (also from the SDK and the CLI).
import type { History } from "../documents/content";
import { kindLabel, nodePreview, nodeTime } from "./describe";
import "./history.css";

/** Steps of the current path listed (the newest); undo walks further up. */
const PATH_SHOWN = 30;
/** Branches listed, newest first; more behind a button. */
const BRANCHES_SHOWN = 40;

export interface HistoryPanelProps {
  history: History;
  /** Changes whenever the history or its head does (the panel reads `history` afresh). */
  version: number;
  disabled: boolean;
  onRestore(id: number): void;
  onClose(): void;
  showAll: boolean;
  onShowAll(): void;
}

export function HistoryPanel({ history, disabled, onRestore, onClose, showAll, onShowAll }: HistoryPanelProps) {
  const head = history.head;
  const onPath = new Set(history.path(head));
  const leaves = history.leaves().sort((a, b) => b - a);
  const shownLeaves = showAll ? leaves : leaves.slice(0, BRANCHES_SHOWN);
  const path = history.path(head);
  const pathShown = path.slice(-PATH_SHOWN);
  const siblings = history.siblings(head);
  return (
    <aside class="history-panel" aria-labelledby="history-heading">
      <div class="panel-head">
        <h2 id="history-heading">History</h2>
        <button type="button" onClick={onClose}>Close</button>
      </div>
      {siblings.length > 1 && (
        <section aria-labelledby="alternatives-heading">
          <h3 id="alternatives-heading">Alternatives here ({siblings.indexOf(head) + 1} of {siblings.length})</h3>
          <ol class="history-list" data-list="alternatives">
            {siblings.map((id) => (
              <HistoryItem key={id} history={history} id={id} current={id === head} disabled={disabled} onRestore={onRestore} />
            ))}
          </ol>
        </section>
      )}
      <section aria-labelledby="branches-heading">
        <h3 id="branches-heading">Branches ({leaves.length})</h3>
        <ol class="history-list" data-list="branches">
          {shownLeaves.map((id) => (
            <HistoryItem key={id} history={history} id={id} current={id === head} contains={onPath.has(id)} disabled={disabled}
              onRestore={onRestore} steps={history.path(id).length - 1} />
          ))}
        </ol>
        {shownLeaves.length < leaves.length && (
          <button type="button" onClick={onShowAll}>Show all {leaves.length} branches</button>
        )}
      </section>
      <section aria-labelledby="path-heading">
        <h3 id="path-heading">This text, step by step</h3>
        {pathShown.length < path.length && <p class="hint">The {PATH_SHOWN} newest of {path.length} steps; Undo walks further back.</p>}
        <ol class="history-list" data-list="path">
          {pathShown.map((id) => (
            <HistoryItem key={id} history={history} id={id} current={id === head} disabled={disabled} onRestore={onRestore} />
          ))}
        </ol>
      </section>
    </aside>
  );
}

function HistoryItem({ history, id, current, contains, disabled, onRestore, steps }: {
  history: History; id: number; current: boolean; contains?: boolean; disabled: boolean; onRestore(id: number): void; steps?: number;
}) {
  const node = history.nodes[id];
  const label = `${kindLabel(node)} ${id}`;
  return (
    <li class="history-item" data-node={id} data-kind={node.kind} aria-current={current ? "step" : undefined}>
      <span class="history-kind">{label}</span>
      {steps !== undefined && <span class="hint"> · {steps} step{steps === 1 ? "" : "s"}</span>}
      <span class="hint"> · {nodeTime(node)}</span>
      <span class="history-preview">{nodePreview(node)}</span>
      {current ? <span class="history-here">shown now</span>
        : <button type="button" disabled={disabled} onClick={() => onRestore(id)} aria-label={`Restore ${label}`}>
          {contains ? "Go back here" : "Restore"}</button>}
    </li>
  );
}
