// Memory and the author's note: a text the story keeps (story.memory / story.authors_note,
// `{"text", "context_config"}`, docs/formats.md section 3), its token count as it is typed, and
// where the text service places it.
import type { Api } from "../api/client";
import type { StoryJson } from "../documents/story";
import { ContextConfigFields } from "./ContextConfigFields";
import { TokenCount } from "./TokenCount";

export function TextPartPanel({ api, part, label, hint, story, update, readOnly }: {
  api: Api; part: "memory" | "authors_note"; label: string; hint: string; story: StoryJson;
  update(apply: (story: any) => void): void; readOnly: boolean;
}) {
  const value = story[part] as StoryJson;
  const text = String(value?.text ?? "");
  return (
    <section aria-labelledby={`${part}-title`}>
      <h2 id={`${part}-title`}>{label}</h2>
      <p class="hint">{hint}</p>
      <label>{label} text
        <textarea name={part} rows={6} value={text} disabled={readOnly}
          onInput={(e) => { const v = (e.target as HTMLTextAreaElement).value; update((s) => (s[part].text = v)); }} />
      </label>
      <TokenCount api={api} text={text} model={String((story.settings as any)?.text_model ?? "")} label={label} />
      <details>
        <summary>Context settings</summary>
        <ContextConfigFields idPrefix={part} config={value.context_config as StoryJson} disabled={readOnly}
          onChange={(next) => update((s) => (s[part].context_config = next))} />
      </details>
    </section>
  );
}
