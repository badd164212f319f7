// "Illustrate": the image panel. The prompt (the server's reading of its emphasis, `{}` `[]`
// `(x:1.2)`, shown by weight), its token count in the encoder's 75-token chunks (the image
// tokenize route), the negative prompt, quality toggle, undesired-content preset, size, steps,
// guidance, sampler, seed and number of images; progress previews while it runs; the picked
// picture is stored encrypted and inserted into the story as an illustration. From an
// illustration: re-run, variations, img2img, inpaint (a brush mask) and outpaint.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import type { Vault } from "../api/vault";
import type { Block } from "../documents/content";
import { Float, toPlain, type Json } from "../documents/json";
import type { StoryJson } from "../documents/story";
import { base64ToBytes, bytesToBase64, generateImages, imageModels, tokenizePrompt, type GeneratedImage, type ImageModels, type TokenizeReply } from "./api";
import { NOISE_NOTE } from "./illustration";
import { MaskCanvas, type MaskHandle } from "./MaskCanvas";
import { imageBytes } from "./store";

type Action = "generate" | "img2img" | "inpaint" | "outpaint";
const SIZES: [number, number][] = [[512, 512], [512, 768], [768, 512], [640, 640], [832, 1216], [1216, 832], [1024, 1024], [256, 256], [128, 128]];
const TOKENIZE_DELAY_MS = 400;

interface Settings {
  model: string; prompt: string; negative_prompt: string; negative_preset: string; quality_tags: boolean; width: number;
  height: number; steps: number; sampler: string; guidance_scale: number | null; guidance_rescale: number; seed: number | null;
}

function settingsFrom(value: any): Settings {
  const v = (toPlain(value) ?? {}) as any;
  return { model: v.model ?? "", prompt: v.prompt ?? "", negative_prompt: v.negative_prompt ?? "", negative_preset: v.negative_preset ?? "",
    quality_tags: v.quality_tags !== false, width: v.width || 512, height: v.height || 512, steps: v.steps || 28, sampler: v.sampler ?? "",
    guidance_scale: typeof v.guidance_scale === "number" ? v.guidance_scale : null, guidance_rescale: v.guidance_rescale ?? 0,
    seed: typeof v.seed === "number" ? v.seed : null };
}

/** ImageSettings as the story document keeps them (docs/formats.md, section 3). */
export function settingsJson(s: Settings, seed: number | null, width = s.width, height = s.height): Json {
  return { model: s.model, prompt: s.prompt, negative_prompt: s.negative_prompt, negative_preset: s.negative_preset,
    quality_tags: s.quality_tags, width, height, steps: s.steps, sampler: s.sampler,
    guidance_scale: s.guidance_scale === null ? null : new Float(s.guidance_scale), guidance_rescale: new Float(s.guidance_rescale), seed };
}

export function ImagePanel({ vault, story, updateStory, passage, source, onInsert, onClose }: {
  vault: Vault; story: StoryJson; updateStory(apply: (story: any) => void): void; passage: string; source: Block | null;
  onInsert(png: Uint8Array, caption: string, settings: Json, replaces: string | null): Promise<void>; onClose(): void;
}) {
  const api = vault.api;
  const [models, setModels] = useState<ImageModels | null>(null);
  const [s, setS] = useState<Settings>(() => {
    const base = settingsFrom(source ? source.settings : (story.settings as any)?.image);
    if (!source && !base.prompt) base.prompt = passage.trim().slice(0, 400);
    return base;
  });
  const [count, setCount] = useState(1);
  const [action, setAction] = useState<Action>("generate");
  const [strength, setStrength] = useState(0.6);
  const [extend, setExtend] = useState({ left: 0, right: 128, top: 0, bottom: 0 });
  const [tokens, setTokens] = useState<TokenizeReply | null>(null);
  const [running, setRunning] = useState(false);
  const [progress, setProgress] = useState<{ step: number; total: number }>({ step: 0, total: 0 });
  const [previews, setPreviews] = useState<string[]>([]);
  const [previewsSeen, setPreviewsSeen] = useState(0);
  const [runs, setRuns] = useState(0);
  const [results, setResults] = useState<GeneratedImage[]>([]);
  const [picked, setPicked] = useState(0);
  const [error, setError] = useState("");
  const [sourcePng, setSourcePng] = useState<Uint8Array | null>(null);
  const [sourceSize, setSourceSize] = useState<{ width: number; height: number } | null>(null);
  const [inserted, setInserted] = useState("");
  const abort = useRef<AbortController | null>(null);
  const mask = useRef<MaskHandle | null>(null);
  const sourceUrl = useMemo(() => (sourcePng ? URL.createObjectURL(new Blob([sourcePng as BlobPart], { type: "image/png" })) : ""), [sourcePng]);

  useEffect(() => {
    imageModels(api).then(setModels).catch((e) => setError(`The image models could not be listed: ${e?.message ?? e}`));
  }, [api]);
  useEffect(() => {
    if (!source) return;
    imageBytes(vault, String(source.image_id)).then(async (png) => {
      const bitmap = await createImageBitmap(new Blob([png as BlobPart], { type: "image/png" }));
      setSourceSize({ width: bitmap.width, height: bitmap.height });
      setSourcePng(png);
    }).catch((e) => setError(`The picture could not be opened: ${e?.message ?? e}`));
  }, [source]);
  const model = models?.models.find((m) => m.name === s.model) ?? models?.models.find((m) => m.is_default) ?? models?.models[0];

  useEffect(() => {
    if (!s.prompt) {
      setTokens(null);
      return;
    }
    let current = true;
    const timer = window.setTimeout(() => {
      tokenizePrompt(api, { model: s.model, prompt: s.prompt, quality_tags: s.quality_tags })
        .then((reply) => current && setTokens(reply))
        .catch(() => current && setTokens(null));
    }, TOKENIZE_DELAY_MS);
    return () => {
      current = false;
      window.clearTimeout(timer);
    };
  }, [api, s.prompt, s.model, s.quality_tags]);

  // The story keeps the panel's last settings as its image defaults; as formats.md has them, the
  // defaults hold no prompt and no seed (those belong to each illustration).
  const keepDefaults = (next: Settings) => updateStory((st) => (st.settings.image = { ...(settingsJson(next, null) as any), prompt: "" }));
  const set = <K extends keyof Settings>(key: K, value: Settings[K]) => {
    const next = { ...s, [key]: value };
    setS(next);
    if (!source) keepDefaults(next);
  };

  const run = async (chosen: Action, options: { newSeed?: boolean } = {}) => {
    setError("");
    setResults([]);
    setPreviews([]);
    setPreviewsSeen(0);
    setInserted("");
    setProgress({ step: 0, total: s.steps });
    const body: Record<string, unknown> = {
      action: chosen, model: s.model, prompt: s.prompt, negative_prompt: s.negative_prompt, negative_preset: s.negative_preset,
      quality_tags: s.quality_tags, steps: s.steps, sampler: s.sampler, guidance_rescale: s.guidance_rescale,
      n_images: count, preview_every: Math.max(1, Math.round(s.steps / 8)),
    };
    if (s.guidance_scale !== null) body.guidance_scale = s.guidance_scale;
    const seed = options.newSeed ? Math.floor(Math.random() * 2 ** 31) : s.seed;
    if (seed !== null) body.seed = seed;
    if (chosen === "generate") Object.assign(body, { width: s.width, height: s.height });
    else {
      if (!sourcePng) return setError("The picture is still being opened");
      body.image = bytesToBase64(sourcePng);
      body.strength = strength;
      if (chosen === "inpaint") {
        if (!mask.current?.painted()) return setError("Paint the part to redraw on the picture first (or use Mask the centre)");
        body.mask = bytesToBase64(await mask.current.png());
      }
      if (chosen === "outpaint") Object.assign(body, extend);
    }
    const controller = new AbortController();
    abort.current = controller;
    setRunning(true);
    const got: GeneratedImage[] = [];
    try {
      await generateImages(api, body, {
        onAccepted: (accepted) => setProgress({ step: 0, total: accepted.steps }),
        onProgress: (p) => {
          setProgress({ step: p.step, total: p.total_steps });
          if (p.previews.length) {
            setPreviews(p.previews.map((b) => `data:image/png;base64,${b}`));
            setPreviewsSeen((n) => n + 1);
          }
        },
        onImage: (image) => {
          got.push(image);
          setResults([...got]);
        },
      }, controller.signal);
      setPicked(0);
    } catch (e: any) {
      setError(`The picture could not be made: ${e?.message ?? e}`);
    } finally {
      abort.current = null;
      setRunning(false);
      setRuns((n) => n + 1);
    }
  };

  const insert = async (replace: boolean) => {
    const image = results[picked];
    if (!image) return;
    const caption = source ? String(source.caption ?? "") : passage.trim().slice(0, 120) || s.prompt.slice(0, 120);
    try {
      await onInsert(base64ToBytes(image.png), caption, settingsJson(s, image.seed, image.width, image.height),
        replace && source ? String(source.image_id) : null);
      setInserted(replace ? "The illustration was replaced." : "The illustration is in the story.");
    } catch (e: any) {
      setError(`The picture could not be saved: ${e?.message ?? e}`);
    }
  };

  const sizeValue = `${s.width}x${s.height}`;
  const fits = (w: number, h: number) => !models || w * h <= models.max_pixels;
  return (
    <section class="image-panel" aria-labelledby="image-title">
      <div class="bar">
        <h2 id="image-title">{source ? "Edit picture" : "Illustrate"}</h2>
        <button type="button" onClick={onClose}>Close</button>
      </div>
      {model?.builtin && (
        <p class="noise-warning" role="note" data-builtin="yes">
          <strong>This server's image model ({model.name}) is the built-in untrained test model: its pictures are noise.</strong>{" "}
          To get real pictures, load a real checkpoint: Fabula's <code>docs/image.md</code>, section
          "Loading a real checkpoint", says how (<code>FABULA_IMAGE_MODELS</code>).
        </p>
      )}
      {source && sourceUrl && sourceSize && (
        <div class="source-picture">
          <fieldset>
            <legend>What to do with this picture</legend>
            <div class="row" role="radiogroup" aria-label="Action">
              {(["generate", "img2img", "inpaint", "outpaint"] as Action[]).map((a) => (
                <label class="check inline"><input type="radio" name="image-action" value={a} checked={action === a}
                  onChange={() => setAction(a)} /> {a === "generate" ? "Re-run its settings" : a}</label>
              ))}
            </div>
          </fieldset>
          {action === "inpaint" ? <MaskCanvas src={sourceUrl} width={sourceSize.width} height={sourceSize.height} handle={mask} />
            : <img class="source-img" src={sourceUrl} alt={String(source.caption || "The illustration")} width={sourceSize.width} height={sourceSize.height} />}
          {action !== "generate" && (
            <label>Strength (how much is redrawn) {strength}
              <input type="range" name="strength" min={0.05} max={1} step={0.05} value={strength} onInput={(e) => setStrength(Number((e.target as HTMLInputElement).value))} />
            </label>
          )}
          {action === "outpaint" && (
            <div class="grid2">
              {(["left", "right", "top", "bottom"] as const).map((side) => (
                <label>Extend {side} (px) <input type="number" name={`extend-${side}`} min={0} step={64} value={extend[side]}
                  onInput={(e) => setExtend({ ...extend, [side]: Math.max(0, Number((e.target as HTMLInputElement).value) || 0) })} /></label>
              ))}
            </div>
          )}
        </div>
      )}
      <label>Prompt
        <textarea name="image-prompt" rows={3} value={s.prompt} onInput={(e) => set("prompt", (e.target as HTMLTextAreaElement).value)}
          aria-describedby="prompt-syntax" />
      </label>
      <p class="hint" id="prompt-syntax">{"{word} strengthens, [word] weakens, (word:1.3) sets the weight."}</p>
      {tokens && (
        <div class="prompt-report" aria-live="polite">
          <p class="prompt-emphasis" aria-label="The prompt as the model weighs it">
            {tokens.prompt.segments.map((seg) => (
              <span class={seg.weight > 1 ? "w-up" : seg.weight < 1 ? "w-down" : ""} title={`weight ${seg.weight}`} data-weight={seg.weight}>{seg.text}</span>
            ))}
          </p>
          <p class="token-count" data-tokens={tokens.prompt.token_count}>
            {tokens.prompt.token_count} tokens in {tokens.prompt.chunks.length} chunk{tokens.prompt.chunks.length === 1 ? "" : "s"} of {tokens.chunk_tokens} (at most {tokens.max_chunks})
          </p>
          <ol class="chunks">
            {tokens.prompt.chunks.map((chunk, i) => (
              <li data-chunk={i} class="chunk">
                <span class="chunk-head">Chunk {i + 1}: {chunk.tokens.length}/{tokens.chunk_tokens}</span>
                <span class="chunk-bar" style={{ width: `${Math.min(100, (100 * chunk.tokens.length) / tokens.chunk_tokens)}%` }} />
              </li>
            ))}
          </ol>
          {tokens.prompt.dropped_words.length > 0 && <p class="error">Dropped (beyond the limit): {tokens.prompt.dropped_words.join(" ")}</p>}
        </div>
      )}
      <label>Undesired content (negative prompt)
        <textarea name="image-negative" rows={2} value={s.negative_prompt} onInput={(e) => set("negative_prompt", (e.target as HTMLTextAreaElement).value)} />
      </label>
      <div class="grid2">
        <label class="check"><input type="checkbox" name="quality-tags" checked={s.quality_tags} onChange={(e) => set("quality_tags", (e.target as HTMLInputElement).checked)} /> Add quality tags</label>
        <label>Undesired-content preset
          <select name="negative-preset" value={s.negative_preset} onChange={(e) => set("negative_preset", (e.target as HTMLSelectElement).value)}>
            <option value="">The model's default{model ? ` (${model.default_negative_preset})` : ""}</option>
            <option value="none">None</option>
            {model?.negative_presets.map((p) => <option value={p.name}>{p.name}</option>)}
          </select>
        </label>
        {action === "generate" && (
          <label>Size
            <select name="size" value={SIZES.some(([w, h]) => `${w}x${h}` === sizeValue) ? sizeValue : ""} onChange={(e) => {
              const [w, h] = (e.target as HTMLSelectElement).value.split("x").map(Number);
              if (w && h) { const next = { ...s, width: w, height: h }; setS(next); if (!source) keepDefaults(next); }
            }}>
              <option value="">Custom</option>
              {SIZES.filter(([w, h]) => fits(w, h)).map(([w, h]) => <option value={`${w}x${h}`}>{w} × {h}{w === h ? " square" : w > h ? " landscape" : " portrait"}</option>)}
            </select>
          </label>
        )}
        {action === "generate" && <label>Width <input type="number" name="width" min={64} step={64} value={s.width} onInput={(e) => set("width", Number((e.target as HTMLInputElement).value) || 64)} /></label>}
        {action === "generate" && <label>Height <input type="number" name="height" min={64} step={64} value={s.height} onInput={(e) => set("height", Number((e.target as HTMLInputElement).value) || 64)} /></label>}
        <label>Steps <input type="number" name="steps" min={1} max={models?.max_steps ?? 150} value={s.steps} onInput={(e) => set("steps", Math.max(1, Number((e.target as HTMLInputElement).value) || 1))} /></label>
        <label>Guidance <input type="number" name="guidance" min={0} step={0.5} value={s.guidance_scale ?? ""} placeholder={model ? String(model.default_guidance_scale) : ""}
          onInput={(e) => { const raw = (e.target as HTMLInputElement).value; set("guidance_scale", raw === "" ? null : Number(raw)); }} /></label>
        <label>Sampler
          <select name="sampler" value={s.sampler} onChange={(e) => set("sampler", (e.target as HTMLSelectElement).value)}>
            <option value="">The model's default{model ? ` (${model.default_sampler})` : ""}</option>
            {models?.samplers.map((x) => <option value={x.name}>{x.display_name}</option>)}
          </select>
        </label>
        <label>Seed <input type="number" name="image-seed" min={0} value={s.seed ?? ""} placeholder="random"
          onInput={(e) => { const raw = (e.target as HTMLInputElement).value; set("seed", raw === "" ? null : Math.max(0, Math.floor(Number(raw)))); }} /></label>
        <label>Images <input type="number" name="n-images" min={1} max={models?.max_images ?? 8} value={count}
          onInput={(e) => setCount(Math.max(1, Math.min(models?.max_images ?? 8, Number((e.target as HTMLInputElement).value) || 1)))} /></label>
      </div>
      <div class="row">
        <button type="button" class="primary" disabled={running || !s.prompt.trim()} onClick={() => void run(source ? action : "generate")}>
          {source ? (action === "generate" ? "Re-run" : `Run ${action}`) : "Generate"}</button>
        {source && <button type="button" disabled={running} onClick={() => void run("img2img", { newSeed: true })}>Variations</button>}
        <button type="button" disabled={!running} onClick={() => abort.current?.abort()}>Stop</button>
      </div>
      <div class="image-progress" role="status" aria-live="polite" data-running={running ? "yes" : "no"} data-step={progress.step}
        data-previews={previewsSeen} data-runs={runs}>
        {running && <><progress max={progress.total || 1} value={progress.step} aria-label="Generation progress" /> step {progress.step} of {progress.total}</>}
      </div>
      {running && previews.length > 0 && (
        <div class="previews">{previews.map((p, i) => <img src={p} alt={`Preview ${i + 1}`} class="preview-img" />)}</div>
      )}
      {results.length > 0 && (
        <fieldset class="results">
          <legend>Pick a picture</legend>
          <div class="result-grid">
            {results.map((r, i) => (
              <label class="result">
                <input type="radio" name="picked" checked={picked === i} onChange={() => setPicked(i)} />
                <img src={`data:image/png;base64,${r.png}`} alt={`Result ${i + 1}, seed ${r.seed}`} width={r.width} height={r.height} />
                <span>seed {r.seed}</span>
              </label>
            ))}
          </div>
          {model?.builtin && <p class="hint">{NOISE_NOTE}</p>}
          <div class="row">
            <button type="button" class="primary" disabled={running} onClick={() => void insert(false)}>Insert into the story</button>
            {source && <button type="button" disabled={running} onClick={() => void insert(true)}>Replace this illustration</button>}
          </div>
        </fieldset>
      )}
      {inserted && <p class="ok" role="status">{inserted}</p>}
      {error && <p class="error" role="alert">{error}</p>}
    </section>
  );
}
