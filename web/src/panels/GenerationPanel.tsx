// Generation settings, saved with the story (story.settings, docs/formats.md section 3): the
// text service's preset (GET /ai/presets), every sampler control of the native text API with its
// allowed range (the table below is services/text/params.py's SamplingParams; the gateway checks
// the same ranges), the sampler order (drag, or Alt+Arrow keys / the arrow buttons), stop
// sequences, banned strings and the seed.
import { useEffect, useState } from "preact/hooks";
import type { Api } from "../api/client";
import { Float, num } from "../documents/json";
import type { StoryJson } from "../documents/story";
import { DEFAULT_ORDER } from "./model";

export interface SamplerControl {
  name: string;
  label: string;
  min: number;
  max: number;
  /** The lowest value itself is not allowed (a value must be above it). */
  lowOpen?: boolean;
  integer?: boolean;
  /** Values above `min` but below this are refused (a divisor too small to divide by). */
  minAboveLow?: number;
  off: number;
  doc: string;
}

const MAX_TOKEN_COUNT = 1 << 20;
export const SAMPLER_CONTROLS: SamplerControl[] = [
  { name: "temperature", label: "Temperature", min: 0, max: 100, minAboveLow: 9.5367431640625e-7, off: 1, doc: "divides the logits; 0 is greedy decoding" },
  { name: "top_k", label: "Top-k", min: 0, max: MAX_TOKEN_COUNT, integer: true, off: 0, doc: "keeps the k most likely tokens; 0 is off" },
  { name: "top_p", label: "Top-p (nucleus)", min: 0, max: 1, lowOpen: true, off: 1, doc: "keeps the most likely tokens holding this much of the mass" },
  { name: "top_a", label: "Top-a", min: 0, max: 1, off: 0, doc: "keeps tokens with p ≥ top_a · p_max²" },
  { name: "typical_p", label: "Typical-p", min: 0, max: 1, lowOpen: true, off: 1, doc: "keeps the tokens nearest the entropy, up to this mass" },
  { name: "tail_free", label: "Tail-free z", min: 0, max: 1, lowOpen: true, off: 1, doc: "cuts where the curvature of the sorted probabilities reaches z" },
  { name: "min_p", label: "Min-p", min: 0, max: 1, off: 0, doc: "keeps tokens with p ≥ min_p · p_max" },
  { name: "repetition_penalty", label: "Repetition penalty", min: 0, max: 10, lowOpen: true, off: 1, doc: "divides positive logits of tokens seen in the range" },
  { name: "repetition_penalty_range", label: "Repetition penalty range", min: 0, max: MAX_TOKEN_COUNT, integer: true, off: 0, doc: "recent tokens the penalties see; 0 is all" },
  { name: "repetition_penalty_slope", label: "Repetition penalty slope", min: 0, max: 10, off: 0, doc: "fades the penalty towards the range's older end; 0 is flat" },
  { name: "frequency_penalty", label: "Frequency penalty", min: -2, max: 2, off: 0, doc: "subtracted once per occurrence in the range" },
  { name: "presence_penalty", label: "Presence penalty", min: -2, max: 2, off: 0, doc: "subtracted once if the token occurs in the range" },
  { name: "dry_multiplier", label: "DRY multiplier", min: 0, max: 100, off: 0, doc: "strength of the repeated-sequence penalty; 0 is off" },
  { name: "dry_base", label: "DRY base", min: 1, max: 10, lowOpen: true, off: 1.75, doc: "the penalty grows by this factor per token of repeat" },
  { name: "dry_allowed_length", label: "DRY allowed length", min: 1, max: 1000, integer: true, off: 2, doc: "repeats up to this many tokens are not penalised" },
  { name: "dry_penalty_last_n", label: "DRY range", min: 0, max: MAX_TOKEN_COUNT, integer: true, off: 0, doc: "recent context tokens it looks at; 0 is all" },
  { name: "xtc_threshold", label: "XTC threshold", min: 0, max: 1, off: 0.1, doc: "tokens at least this likely are the top choices (above 0.5: off)" },
  { name: "xtc_probability", label: "XTC probability", min: 0, max: 1, off: 0, doc: "chance per token of removing all top choices but the least likely; 0 is off" },
  { name: "unified_linear", label: "Unified: linear", min: 0, max: 10, off: 1, doc: "multiplies the log-probabilities; 1 is neutral" },
  { name: "unified_quad", label: "Unified: quadratic", min: 0, max: 10, off: 0, doc: "subtracts this times the squared log-probability; 0 is off" },
  { name: "unified_conf", label: "Unified: confidence", min: -10, max: 10, off: 0, doc: "adds this times the entropy to the linear factor; 0 is off" },
  { name: "mirostat", label: "Mirostat version", min: 0, max: 2, integer: true, off: 0, doc: "1 or 2; 0 is off" },
  { name: "mirostat_tau", label: "Mirostat tau", min: 0, max: 100, off: 5, doc: "the target surprise, in bits" },
  { name: "mirostat_eta", label: "Mirostat eta", min: 0, max: 1, off: 0.1, doc: "the learning rate of mu" },
  { name: "cfg_scale", label: "CFG scale", min: 0, max: 100, off: 1, doc: "classifier-free guidance; 1 is off" },
];

/** The text service's sampling controls that take one of a few names. */
export const CHOICE_CONTROLS: { name: string; label: string; options: string[]; doc: string }[] = [
  { name: "phrase_repetition_penalty", label: "Phrase repetition penalty", doc: "NovelAI's levels; off by default",
    options: ["off", "very_light", "light", "medium", "aggressive", "very_aggressive"] },
  { name: "sampler_convention", label: "Sampler convention", doc: "whose definition of the slope, tail-free, top-k and typical-p to follow",
    options: ["fabula", "koboldcpp"] },
];

const SAMPLER_LABELS: Record<string, string> = {
  temperature: "Temperature", top_k: "Top-k", top_p: "Top-p", top_a: "Top-a", typical_p: "Typical-p", tail_free: "Tail-free", min_p: "Min-p",
  repetition_penalty: "Repetition penalties", phrase_repetition_penalty: "Phrase repetition penalty", dry: "DRY", xtc: "XTC",
  unified: "Unified", mirostat: "Mirostat",
};
const PENALTIES = ["repetition_penalty", "phrase_repetition_penalty", "dry"];

/** Every step, as the service runs them: a newer step an order leaves out takes its default
 * place (a penalty before the order's first step, the others after its last; params.parse_order). */
function complete(order: Step[]): Step[] {
  const named = new Set(order.map((s) => s.sampler));
  const left = DEFAULT_ORDER.filter((name) => !named.has(name)).map((sampler) => ({ sampler, enabled: true }));
  return [...left.filter((s) => PENALTIES.includes(s.sampler)), ...order, ...left.filter((s) => !PENALTIES.includes(s.sampler))];
}

/** Why `value` is out of the control's range, or "" when it is allowed. */
export function rangeError(control: SamplerControl, value: number): string {
  if (!Number.isFinite(value)) return "must be a number";
  if (control.integer && !Number.isInteger(value)) return "must be a whole number";
  if (control.minAboveLow && value > control.min && value < control.minAboveLow) {
    return `must be ${control.min} or at least ${control.minAboveLow}`;
  }
  if (value < control.min || (control.lowOpen && value === control.min) || value > control.max) {
    return `must be ${control.lowOpen ? "above" : "at least"} ${control.min} and at most ${control.max}`;
  }
  return "";
}

interface Preset { name: string; description: string; sampling: Record<string, any> }

type Step = { sampler: string; enabled: boolean };

function stepsOf(settings: any, preset: Preset | undefined): Step[] {
  const own = (settings.sampler_order ?? []) as Step[];
  if (own.length) return complete(own.map((s) => ({ sampler: s.sampler, enabled: s.enabled !== false })));
  // GET /ai/presets gives the preset's protobuf as JSON: enum names (SAMPLER_TOP_K) and no `enabled`
  // where it is false (protobuf leaves default values out).
  const fromPreset = (preset?.sampling?.sampler_order ?? []) as Step[];
  if (fromPreset.length) {
    return complete(fromPreset.map((s) => ({ sampler: String(s.sampler).replace(/^SAMPLER_/, "").toLowerCase(), enabled: s.enabled === true })));
  }
  return DEFAULT_ORDER.map((sampler) => ({ sampler, enabled: true }));
}

export function GenerationPanel({ api, story, update, readOnly }: {
  api: Api; story: StoryJson; update(apply: (story: any) => void): void; readOnly: boolean;
}) {
  const settings = story.settings as any;
  const [presets, setPresets] = useState<Preset[]>([]);
  const [presetError, setPresetError] = useState("");
  const [draft, setDraft] = useState<Record<string, string>>({});
  const [dragging, setDragging] = useState<number | null>(null);
  const [moved, setMoved] = useState("");
  useEffect(() => {
    api.request("GET", "/ai/presets").then((r) => r.json()).then(setPresets)
      .catch((e) => setPresetError(`The presets could not be loaded: ${e?.message ?? e}`));
  }, [api]);
  const preset = presets.find((p) => p.name === settings.service_preset) ?? presets[0];
  const steps = stepsOf(settings, preset);

  const setSampling = (control: SamplerControl, raw: string) => {
    setDraft({ ...draft, [control.name]: raw });
    if (raw.trim() === "") {
      update((s) => (s.settings.sampling[control.name] = null));
      return;
    }
    const value = Number(raw);
    if (rangeError(control, value)) return;
    update((s) => (s.settings.sampling[control.name] = control.integer ? value : new Float(value)));
  };
  const setOrder = (next: Step[], announce = "") => {
    update((s) => (s.settings.sampler_order = next.map((step) => ({ sampler: step.sampler, enabled: step.enabled }))));
    if (announce) setMoved(announce);
  };
  const move = (from: number, to: number) => {
    if (to < 0 || to >= steps.length || from === to) return;
    const next = steps.slice();
    const [step] = next.splice(from, 1);
    next.splice(to, 0, step);
    setOrder(next, `${SAMPLER_LABELS[step.sampler] ?? step.sampler} moved to place ${to + 1} of ${steps.length}`);
  };
  const lines = (key: "stop_sequences" | "banned_strings") => ((settings[key] ?? []) as string[]).join("\n");
  // What is typed stays as typed (an empty last line included); the story keeps the non-empty lines.
  const [lineDrafts, setLineDrafts] = useState<Record<string, string>>({});
  const setLines = (key: "stop_sequences" | "banned_strings", raw: string) => {
    setLineDrafts({ ...lineDrafts, [key]: raw });
    update((s) => (s.settings[key] = raw.split("\n").filter((line) => line !== "")));
  };

  return (
    <section aria-labelledby="generation-title" class="generation">
      <h2 id="generation-title">Generation settings</h2>
      <label>Preset
        <select name="preset" value={settings.service_preset ?? ""} disabled={readOnly}
          onChange={(e) => { const v = (e.target as HTMLSelectElement).value; update((s) => (s.settings.service_preset = v)); }}>
          <option value="">The service's default</option>
          {presets.map((p) => <option value={p.name}>{p.name}</option>)}
        </select>
      </label>
      {preset?.description && <p class="hint">{preset.description}</p>}
      {presetError && <p class="error" role="alert">{presetError}</p>}
      <fieldset>
        <legend>Samplers (empty = the preset's value)</legend>
        <div class="grid2">
          {SAMPLER_CONTROLS.map((control) => {
            const stored = num(settings.sampling?.[control.name]);
            const raw = draft[control.name] ?? (stored === null ? "" : String(stored));
            const problem = raw.trim() === "" ? "" : rangeError(control, Number(raw));
            const fromPreset = preset?.sampling?.[control.name];
            return (
              <label>
                {control.label}
                <input type="number" name={`sampling-${control.name}`} value={raw} min={control.min} max={control.max}
                  step={control.integer ? 1 : "any"} disabled={readOnly} aria-invalid={problem ? "true" : undefined}
                  placeholder={fromPreset !== undefined ? String(fromPreset) : String(control.off)}
                  aria-describedby={`sampling-${control.name}-hint`}
                  onInput={(e) => setSampling(control, (e.target as HTMLInputElement).value)} />
                <span class={problem ? "error" : "hint"} id={`sampling-${control.name}-hint`}>
                  {problem || `${control.lowOpen ? "(" : "["}${control.min}, ${control.max}]; neutral ${control.off}: ${control.doc}`}
                </span>
              </label>
            );
          })}
          {CHOICE_CONTROLS.map((control) => {
            const fromPreset = preset?.sampling?.[control.name];
            return (
              <label>
                {control.label}
                <select name={`sampling-${control.name}`} value={settings.sampling?.[control.name] ?? ""} disabled={readOnly}
                  aria-describedby={`sampling-${control.name}-hint`}
                  onChange={(e) => {
                    const v = (e.target as HTMLSelectElement).value;
                    update((st) => (st.settings.sampling[control.name] = v === "" ? null : v));
                  }}>
                  <option value="">The preset's{typeof fromPreset === "string" ? ` (${String(fromPreset).toLowerCase().replace(/^(phrase_repetition_penalty_|sampler_convention_)/, "")})` : ""}</option>
                  {control.options.map((o) => <option value={o}>{o.replace(/_/g, " ")}</option>)}
                </select>
                <span class="hint" id={`sampling-${control.name}-hint`}>{control.doc}</span>
              </label>
            );
          })}
        </div>
      </fieldset>
      <fieldset>
        <legend>Sampler order</legend>
        <p class="hint" id="order-help">Drag a sampler, or focus it and press Alt+↑ / Alt+↓, to change the order they run in.</p>
        <ol class="sampler-order" aria-describedby="order-help">
          {steps.map((step, index) => (
            <li key={step.sampler} data-sampler={step.sampler} draggable={!readOnly} tabIndex={0}
              aria-label={`${SAMPLER_LABELS[step.sampler] ?? step.sampler}, place ${index + 1} of ${steps.length}`}
              class={dragging === index ? "dragging" : ""}
              onDragStart={(e) => { setDragging(index); e.dataTransfer?.setData("text/plain", String(index)); }}
              onDragOver={(e) => e.preventDefault()}
              onDrop={(e) => {
                e.preventDefault();
                const from = Number(e.dataTransfer?.getData("text/plain") ?? dragging);
                setDragging(null);
                if (Number.isInteger(from)) move(from, index);
              }}
              onDragEnd={() => setDragging(null)}
              onKeyDown={(e) => {
                if (readOnly || !e.altKey) return;
                if (e.key === "ArrowUp") { e.preventDefault(); move(index, index - 1); }
                if (e.key === "ArrowDown") { e.preventDefault(); move(index, index + 1); }
              }}>
              <span class="grip" aria-hidden="true">⠿</span>
              <span class="sampler-name">{SAMPLER_LABELS[step.sampler] ?? step.sampler}</span>
              <label class="check inline"><input type="checkbox" checked={step.enabled} disabled={readOnly}
                onChange={(e) => setOrder(steps.map((s, i) => (i === index ? { ...s, enabled: (e.target as HTMLInputElement).checked } : s)))} />
                <span class="visually-hidden">{SAMPLER_LABELS[step.sampler] ?? step.sampler}</span> on</label>
              <button type="button" onClick={() => move(index, index - 1)} disabled={readOnly || index === 0}
                aria-label={`Move ${SAMPLER_LABELS[step.sampler] ?? step.sampler} up`}>↑</button>
              <button type="button" onClick={() => move(index, index + 1)} disabled={readOnly || index === steps.length - 1}
                aria-label={`Move ${SAMPLER_LABELS[step.sampler] ?? step.sampler} down`}>↓</button>
            </li>
          ))}
        </ol>
        <p class="visually-hidden" aria-live="polite">{moved}</p>
        {(settings.sampler_order ?? []).length > 0 && (
          <button type="button" disabled={readOnly} onClick={() => setOrder([], "The preset's order is used")}>Use the preset's order</button>
        )}
      </fieldset>
      <label>Stop sequences (one a line)
        <textarea name="stop_sequences" rows={2} value={lineDrafts.stop_sequences ?? lines("stop_sequences")} disabled={readOnly}
          onInput={(e) => setLines("stop_sequences", (e.target as HTMLTextAreaElement).value)} />
      </label>
      <label>Banned strings (one a line)
        <textarea name="banned_strings" rows={2} value={lineDrafts.banned_strings ?? lines("banned_strings")} disabled={readOnly}
          onInput={(e) => setLines("banned_strings", (e.target as HTMLTextAreaElement).value)} />
      </label>
      <label>Seed (empty = random each time)
        <input type="number" name="seed" min={0} step={1} value={settings.seed ?? ""} disabled={readOnly}
          onInput={(e) => {
            const raw = (e.target as HTMLInputElement).value;
            const v = Number(raw);
            if (raw === "") update((s) => (s.settings.seed = null));
            else if (Number.isSafeInteger(v) && v >= 0) update((s) => (s.settings.seed = v));
          }} />
      </label>
    </section>
  );
}
