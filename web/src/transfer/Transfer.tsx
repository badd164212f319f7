// The library's import and export controls: Import takes a Fabula archive (with the password its
// account had when it was exported), a NovelAI .scenario or .lorebook, Markdown or text; Export
// gives the account's archive, or one story as HTML or EPUB.
import { useState } from "preact/hooks";
import type { Vault } from "../api/vault";
import { download, exportArchive, exportStory, type StoryFormat } from "./export";
import { importFile, importKind } from "./importer";
import "./transfer.css";

export function TransferBar({ vault, onImported }: { vault: Vault; onImported(storyId?: string): void }) {
  const [file, setFile] = useState<File | null>(null);
  const [isArchive, setIsArchive] = useState(false);
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState("");
  const [message, setMessage] = useState("");
  const [error, setError] = useState("");

  const choose = async (chosen: File | null) => {
    setFile(chosen);
    setMessage("");
    setError("");
    if (!chosen) return setIsArchive(false);
    try {
      setIsArchive(importKind(new Uint8Array(await chosen.slice(0, 1024).arrayBuffer()), chosen.name) === "archive");
    } catch {
      setIsArchive(false); // the import itself says what is wrong with the file
    }
  };

  const run = async (what: string, action: () => Promise<void>) => {
    setBusy(what);
    setError("");
    setMessage("");
    try {
      await action();
    } catch (e: any) {
      setError(`${what} failed: ${e?.message ?? e}`);
    } finally {
      setBusy("");
    }
  };

  const doImport = (event: Event) => {
    event.preventDefault();
    if (!file) return;
    void run("Import", async () => {
      const outcome = await importFile(vault, new Uint8Array(await file.arrayBuffer()), file.name, password);
      setMessage(outcome.summary);
      setPassword("");
      onImported(outcome.storyId);
    });
  };

  return (
    <section class="transfer" aria-labelledby="transfer-heading">
      <h2 id="transfer-heading" class="visually-hidden">Import and export</h2>
      <form class="import-form" onSubmit={doImport}>
        <label>Import a file
          <input type="file" name="import-file" accept=".tar,.scenario,.lorebook,.md,.markdown,.txt,.json"
            onChange={(e) => void choose((e.target as HTMLInputElement).files?.[0] ?? null)} />
        </label>
        {isArchive && (
          <label>The archive's password
            <input type="password" name="archive-password" autoComplete="off" value={password}
              onInput={(e) => setPassword((e.target as HTMLInputElement).value)} />
            <span class="hint">The password its account had when it was exported.</span>
          </label>
        )}
        <button type="submit" disabled={!file || !!busy}>Import</button>
      </form>
      <button type="button" disabled={!!busy} onClick={() => void run("Export", async () => download(await exportArchive(vault)))}>
        Export all (archive)</button>
      <p class="transfer-state" role="status" data-busy={busy ? "yes" : "no"}>{busy ? `${busy}ing…` : message}</p>
      {error && <p class="error" role="alert">{error}</p>}
    </section>
  );
}

export function StoryExport({ vault, storyId, title }: { vault: Vault; storyId: string; title: string }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const go = async (format: StoryFormat) => {
    setBusy(true);
    setError("");
    try {
      download(await exportStory(vault, storyId, format));
    } catch (e: any) {
      setError(`Export failed: ${e?.message ?? e}`);
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <button type="button" disabled={busy} onClick={() => void go("html")} aria-label={`Export HTML: ${title}`}>HTML</button>
      <button type="button" disabled={busy} onClick={() => void go("epub")} aria-label={`Export EPUB: ${title}`}>EPUB</button>
      {error && <span class="error" role="alert">{error}</span>}
    </>
  );
}
