// The library: every story's title, preview, tags, last edit and favourite flag, decrypted here;
// search and sort run in the browser (the server sees only ciphertext).
import { useEffect, useMemo, useState } from "preact/hooks";
import type { Vault } from "../api/vault";
import { StoryStore, type LibraryEntry } from "../documents/store";
import { str, tags } from "../documents/story";
import { StoryExport, TransferBar } from "../transfer/Transfer";

type Sort = "updated" | "title" | "created";

export function LibraryScreen({ vault, onOpen, onAccount, onSignOut }: {
  vault: Vault; onOpen(id: string): void; onAccount(): void; onSignOut(): void;
}) {
  const store = useMemo(() => new StoryStore(vault), [vault]);
  const [entries, setEntries] = useState<LibraryEntry[] | null>(null);
  const [query, setQuery] = useState("");
  const [sort, setSort] = useState<Sort>("updated");
  const [favouritesOnly, setFavouritesOnly] = useState(false);
  const [confirming, setConfirming] = useState<LibraryEntry | null>(null);
  const [error, setError] = useState("");

  const reload = () => store.list().then(setEntries).catch((e) => setError(String(e?.message ?? e)));
  useEffect(() => {
    reload();
  }, [store]);

  const act = async (action: () => Promise<unknown>) => {
    setError("");
    try {
      await action();
    } catch (e: any) {
      setError(String(e?.message ?? e));
    }
    await reload();
  };

  const shown = useMemo(() => {
    const words = query.toLowerCase().split(/\s+/).filter(Boolean);
    const list = (entries ?? []).filter((e) => {
      if (favouritesOnly && e.story.favorite !== true) return false;
      const haystack = [str(e.story, "title"), str(e.story, "preview"), str(e.story, "description"), ...tags(e.story)].join("\n").toLowerCase();
      return words.every((w) => haystack.includes(w));
    });
    const key = (e: LibraryEntry) => (sort === "title" ? str(e.story, "title").toLowerCase() : str(e.story, sort === "created" ? "created_at" : "updated_at"));
    return list.sort((a, b) => (sort === "title" ? key(a).localeCompare(key(b)) : key(b).localeCompare(key(a))));
  }, [entries, query, sort, favouritesOnly]);

  const create = () => act(async () => onOpen((await store.create("Untitled story")).id));

  const toggleFavourite = (entry: LibraryEntry) => act(async () => {
    const doc = await store.open(entry.id);
    doc.story.favorite = !(doc.story.favorite === true);
    await store.save(doc);
  });

  return (
    <main class="library">
      <nav class="bar" aria-label="Account">
        <span class="who">Signed in as <strong>{vault.username}</strong></span>
        <button type="button" onClick={onAccount}>Account</button>
        <button type="button" onClick={onSignOut}>Sign out</button>
      </nav>
      <h1>Your stories</h1>
      <div class="toolbar">
        <button type="button" class="primary" onClick={create}>New story</button>
        <label>Search <input type="search" name="search" value={query} onInput={(e) => setQuery((e.target as HTMLInputElement).value)} /></label>
        <label>Sort by
          <select name="sort" value={sort} onChange={(e) => setSort((e.target as HTMLSelectElement).value as Sort)}>
            <option value="updated">Last edit</option>
            <option value="created">Created</option>
            <option value="title">Title</option>
          </select>
        </label>
        <label class="check"><input type="checkbox" checked={favouritesOnly}
          onChange={(e) => setFavouritesOnly((e.target as HTMLInputElement).checked)} /> Favourites only</label>
      </div>
      <TransferBar vault={vault} onImported={() => void reload()} />
      {error && <p class="error" role="alert">{error}</p>}
      {confirming && (
        <div class="confirm" role="alertdialog" aria-labelledby="confirm-title" aria-describedby="confirm-text">
          <h2 id="confirm-title">Delete “{str(confirming.story, "title") || "Untitled"}”?</h2>
          <p id="confirm-text">The story and its whole history are deleted from the server. This cannot be undone.</p>
          <button type="button" class="danger" onClick={() => { const e = confirming; setConfirming(null); act(() => store.remove(e.id)); }}>Delete</button>
          <button type="button" onClick={() => setConfirming(null)}>Cancel</button>
        </div>
      )}
      {entries === null ? <p role="status">Decrypting your library…</p> : shown.length === 0 ? (
        <p class="empty">{entries.length ? "No story matches." : "No stories yet: start one with “New story”."}</p>
      ) : (
        <ul class="stories" aria-label="Stories">
          {shown.map((entry) => {
            const title = str(entry.story, "title") || "Untitled";
            const updated = str(entry.story, "updated_at");
            return (
              <li key={entry.id} class="story-card" data-story-id={entry.id}>
                <h2><a href={`#/story/${entry.id}`} onClick={(e) => { e.preventDefault(); onOpen(entry.id); }}>{title}</a></h2>
                <p class="preview">{str(entry.story, "preview") || "(empty)"}</p>
                {tags(entry.story).length > 0 && <ul class="tags" aria-label="Tags">{tags(entry.story).map((t) => <li key={t}>{t}</li>)}</ul>}
                <p class="meta">Last edit: <time dateTime={updated}>{updated ? new Date(updated).toLocaleString() : "never"}</time></p>
                <div class="actions">
                  <button type="button" aria-pressed={entry.story.favorite === true} onClick={() => toggleFavourite(entry)}
                    aria-label={`Favourite: ${title}`}>{entry.story.favorite === true ? "★" : "☆"}</button>
                  <button type="button" onClick={() => act(() => store.duplicate(entry.id, `${title} (copy)`))}
                    aria-label={`Duplicate: ${title}`}>Duplicate</button>
                  <button type="button" onClick={() => setConfirming(entry)} aria-label={`Delete: ${title}`}>Delete</button>
                  <StoryExport vault={vault} storyId={entry.id} title={title} />
                </div>
              </li>
            );
          })}
        </ul>
      )}
    </main>
  );
}
