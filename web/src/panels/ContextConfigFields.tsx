// The ContextConfig editor (docs/formats.md, section 3): how a part (memory, author's note, a
// lorebook entry, a category's sub-context) is placed in the context by the text service
// (services/text/story_context.py): prefix/suffix, budget, reserve, priority, trimming, insertion.
import type { StoryJson } from "../documents/story";

const UNITS = ["newline", "sentence", "token"];
const TRIM = ["top", "bottom", "none"];

export function ContextConfigFields({ config, onChange, idPrefix, disabled }: {
  config: StoryJson; onChange(next: StoryJson): void; idPrefix: string; disabled?: boolean;
}) {
  const set = (key: string, value: string | number) => onChange({ ...config, [key]: value });
  const int = (key: string, label: string, min?: number, hint?: string) => (
    <label>{label}
      <input type="number" name={`${idPrefix}-${key}`} value={Number(config[key] ?? 0)} min={min} step={1} disabled={disabled}
        aria-describedby={hint ? `${idPrefix}-${key}-hint` : undefined}
        onInput={(e) => {
          const v = Number((e.target as HTMLInputElement).value);
          if (Number.isInteger(v) && (min === undefined || v >= min)) set(key, v);
        }} />
      {hint && <span class="hint" id={`${idPrefix}-${key}-hint`}>{hint}</span>}
    </label>
  );
  const choice = (key: string, label: string, options: string[]) => (
    <label>{label}
      <select name={`${idPrefix}-${key}`} value={String(config[key])} disabled={disabled}
        onChange={(e) => set(key, (e.target as HTMLSelectElement).value)}>
        {options.map((o) => <option value={o}>{o}</option>)}
      </select>
    </label>
  );
  return (
    <fieldset class="context-config">
      <legend>Placement in the context</legend>
      <div class="grid2">
        <label>Prefix <input name={`${idPrefix}-prefix`} value={String(config.prefix ?? "")} disabled={disabled}
          onInput={(e) => set("prefix", (e.target as HTMLInputElement).value)} /></label>
        <label>Suffix <input name={`${idPrefix}-suffix`} value={String(config.suffix ?? "")} disabled={disabled}
          onInput={(e) => set("suffix", (e.target as HTMLInputElement).value)} /></label>
        {int("insertion_position", "Insertion position", undefined, "≥ 0 from the top, < 0 from the bottom (−1 = the end)")}
        {choice("insertion_type", "Position counts in", UNITS)}
        {int("budget_priority", "Insertion order (priority)", undefined, "higher is placed first")}
        {int("token_budget", "Token budget", 0, "0 = no limit")}
        {int("reserved_tokens", "Reserved tokens", 0)}
        {choice("trim_direction", "Trim from", TRIM)}
        {choice("maximum_trim_type", "Trim at most to a", UNITS)}
      </div>
    </fieldset>
  );
}
