// The lorebook: entries (name, text, keys, regex keys, case, scan depth, always on, enabled,
// cascading, key-relative, category, context config), categories, and a "test this entry against
// the story" view that shows which keys match and where. The story's first lorebook is edited
// (one is created, and listed in the story's `lorebook_ids`, when the first entry is added);
// every lorebook the story lists goes into its generations. Stored as docs/formats.md section 6.
import { useState } from "preact/hooks";
import type { StoryJson } from "../documents/story";
import { ContextConfigFields } from "./ContextConfigFields";
import { newCategory, newEntry, testEntry, type LorebookDoc } from "./model";

export function LorebookPanel({ book, storyText, edit, readOnly, state }: {
  book: LorebookDoc | null; storyText(): string; readOnly: boolean; state: string;
  /** Change the lorebook (created first when the story has none). */
  edit(apply: (book: StoryJson) => void): Promise<void>;
}) {
  const entries = (book?.book.entries as StoryJson[]) ?? [];
  const categories = (book?.book.categories as StoryJson[]) ?? [];
  const [selected, setSelected] = useState<string>("");
  const [categoryName, setCategoryName] = useState("");
  const [test, setTest] = useState<ReturnType<typeof testEntry> | null>(null);
  const entry = entries.find((e) => e.id === selected) ?? null;

  const add = async () => {
    const fresh = newEntry({ name: `Entry ${entries.length + 1}` });
    await edit((b) => (b.entries as StoryJson[]).push(fresh));
    setSelected(fresh.id as string);
    setTest(null);
  };
  const change = (key: string, value: any) => {
    if (!entry) return;
    const id = entry.id;
    void edit((b) => {
      const target = (b.entries as StoryJson[]).find((e) => e.id === id);
      if (target) target[key] = value;
    });
    setTest(null);
  };
  const remove = () => {
    if (!entry) return;
    const id = entry.id;
    void edit((b) => (b.entries = (b.entries as StoryJson[]).filter((e) => e.id !== id)));
    setSelected("");
  };
  const addCategory = () => {
    const name = categoryName.trim();
    if (!name) return;
    void edit((b) => (b.categories as StoryJson[]).push(newCategory(name)));
    setCategoryName("");
  };
  const changeCategory = (id: Json, key: string, value: any) =>
    void edit((b) => {
      const target = (b.categories as StoryJson[]).find((c) => c.id === id);
      if (target) target[key] = value;
    });

  return (
    <section aria-labelledby="lorebook-title" class="lorebook">
      <h2 id="lorebook-title">Lorebook</h2>
      <p class="hint" role="status" data-state={state}>{state === "saving" ? "Saving the lorebook…" : state === "error" ? "The lorebook was not saved" : ""}</p>
      <div class="row">
        <label>Entry
          <select name="lore-entry" value={selected} onChange={(e) => { setSelected((e.target as HTMLSelectElement).value); setTest(null); }}>
            <option value="">{entries.length ? "Choose an entry" : "No entries yet"}</option>
            {entries.map((e) => <option value={String(e.id)}>{String(e.name) || "(unnamed)"}{e.disabled ? " (disabled)" : ""}</option>)}
          </select>
        </label>
        <button type="button" onClick={() => void add()} disabled={readOnly}>New entry</button>
      </div>
      {entry && (
        <div class="lore-entry" data-entry={String(entry.id)}>
          <label>Name <input name="lore-name" value={String(entry.name)} disabled={readOnly} onInput={(e) => change("name", (e.target as HTMLInputElement).value)} /></label>
          <label>Text (inserted into the context)
            <textarea name="lore-text" rows={4} value={String(entry.text)} disabled={readOnly} onInput={(e) => change("text", (e.target as HTMLTextAreaElement).value)} />
          </label>
          <label>Keys (one a line)
            <textarea name="lore-keys" rows={3} value={(entry.keys as string[]).join("\n")} disabled={readOnly}
              onInput={(e) => change("keys", (e.target as HTMLTextAreaElement).value.split("\n"))} />
          </label>
          <div class="checks">
            <label class="check"><input type="checkbox" name="lore-regex" checked={Boolean(entry.regex_keys)} disabled={readOnly} onChange={(e) => change("regex_keys", (e.target as HTMLInputElement).checked)} /> Keys are regular expressions</label>
            <label class="check"><input type="checkbox" name="lore-case" checked={Boolean(entry.case_sensitive)} disabled={readOnly} onChange={(e) => change("case_sensitive", (e.target as HTMLInputElement).checked)} /> Case sensitive</label>
            <label class="check"><input type="checkbox" name="lore-enabled" checked={!entry.disabled} disabled={readOnly} onChange={(e) => change("disabled", !(e.target as HTMLInputElement).checked)} /> Enabled</label>
            <label class="check"><input type="checkbox" name="lore-always" checked={Boolean(entry.always_on)} disabled={readOnly} onChange={(e) => change("always_on", (e.target as HTMLInputElement).checked)} /> Always on</label>
            <label class="check"><input type="checkbox" name="lore-cascading" checked={Boolean(entry.cascading_activation)} disabled={readOnly} onChange={(e) => change("cascading_activation", (e.target as HTMLInputElement).checked)} /> Cascading activation (keys also searched in other active entries)</label>
            <label class="check"><input type="checkbox" name="lore-key-relative" checked={Boolean(entry.key_relative)} disabled={readOnly} onChange={(e) => change("key_relative", (e.target as HTMLInputElement).checked)} /> Position counts from the matched key</label>
          </div>
          <label>Search range (characters from the end; 0 = the whole story)
            <input type="number" name="lore-depth" min={0} value={Number(entry.scan_depth_chars)} disabled={readOnly}
              onInput={(e) => { const v = Number((e.target as HTMLInputElement).value); if (Number.isInteger(v) && v >= 0) change("scan_depth_chars", v); }} />
          </label>
          <label>Category
            <select name="lore-category" value={String(entry.category)} disabled={readOnly} onChange={(e) => change("category", (e.target as HTMLSelectElement).value)}>
              <option value="">None</option>
              {categories.map((c) => <option value={String(c.id)}>{String(c.name)}</option>)}
            </select>
          </label>
          <details>
            <summary>Context settings</summary>
            <ContextConfigFields idPrefix="lore" config={entry.context_config as StoryJson} disabled={readOnly}
              onChange={(next) => change("context_config", next)} />
          </details>
          <div class="row">
            <button type="button" onClick={() => setTest(testEntry(entry, storyText()))}>Test against the story</button>
            <button type="button" class="danger" onClick={remove} disabled={readOnly}>Delete entry</button>
          </div>
          {test && (
            <div class="lore-test" role="region" aria-label="Test result" data-active={test.active ? "yes" : "no"}>
              <p><strong>{test.active ? "Would be inserted" : "Would not be inserted"}</strong>: {test.why}.</p>
              <ul>
                {test.keys.map((k) => (
                  <li data-key={k.key} data-matched={k.matches.length ? "yes" : "no"}>
                    <code>{k.key || "(empty)"}</code>{" "}
                    {k.error ? <span class="error">{k.error}</span>
                      : k.matches.length ? `matches ${k.matches.length}×: ${k.matches.slice(0, 5).map((m) => `“${m.text}” at ${m.index}`).join(", ")}`
                      : "no match"}
                  </li>
                ))}
              </ul>
            </div>
          )}
        </div>
      )}
      <details class="lore-categories">
        <summary>Categories ({categories.length})</summary>
        <ul class="plain">
          {categories.map((c) => (
            <li data-category={String(c.id)}>
              <strong>{String(c.name)}</strong>
              <label class="check"><input type="checkbox" checked={Boolean(c.enabled)} disabled={readOnly} onChange={(e) => changeCategory(c.id, "enabled", (e.target as HTMLInputElement).checked)} /> Enabled</label>
              <label class="check"><input type="checkbox" checked={Boolean(c.create_subcontext)} disabled={readOnly} onChange={(e) => changeCategory(c.id, "create_subcontext", (e.target as HTMLInputElement).checked)} /> Assemble its entries as one sub-context</label>
              {Boolean(c.create_subcontext) && (
                <ContextConfigFields idPrefix={`cat-${String(c.id)}`} config={c.subcontext_config as StoryJson} disabled={readOnly}
                  onChange={(next) => changeCategory(c.id, "subcontext_config", next)} />
              )}
            </li>
          ))}
        </ul>
        <div class="row">
          <label>New category <input name="lore-new-category" value={categoryName} disabled={readOnly} onInput={(e) => setCategoryName((e.target as HTMLInputElement).value)} /></label>
          <button type="button" onClick={addCategory} disabled={readOnly || !categoryName.trim()}>Add category</button>
        </div>
      </details>
      {!book && <p class="hint">This story has no lorebook yet: adding an entry creates one.</p>}
    </section>
  );
}

type Json = import("../documents/json").Json;
