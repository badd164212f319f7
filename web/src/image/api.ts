// The image routes of the gateway (docs/image.md, "HTTP"): the models with their limits, the
// prompt tokenizer, and generation streamed as Server-Sent Events (accepted, progress with
// previews, image, finished | error).
import type { Api } from "../api/client";
import { readEvents } from "../api/sse";

export interface ImageModel {
  name: string; family: string; is_default: boolean; default_width: number; default_height: number; default_steps: number;
  default_guidance_scale: number; default_sampler: string; quality_tags: string; negative_presets: { name: string; text: string }[];
  default_negative_preset: string; builtin: boolean;
}
export interface ImageModels {
  models: ImageModel[];
  samplers: { name: string; display_name: string }[];
  max_pixels: number; max_steps: number; max_images: number;
}
export interface PromptChunk { token_ids: number[]; tokens: string[]; weights: number[]; text: string }
export interface PromptReport {
  token_count: number; chunks: PromptChunk[]; dropped_words: string[]; effective_prompt: string;
  segments: { text: string; weight: number; chunk_break: boolean }[];
}
export interface TokenizeReply { prompt: PromptReport; chunk_tokens: number; max_chunks: number }
export interface GeneratedImage { index: number; seed: number; width: number; height: number; png: string; parameters: string }

export async function imageModels(api: Api): Promise<ImageModels> {
  return (await api.request("GET", "/ai/image/models")).json();
}

export async function tokenizePrompt(api: Api, body: { model: string; prompt: string; quality_tags: boolean }): Promise<TokenizeReply> {
  return (await api.request("POST", "/ai/image/tokenize", { json: body })).json();
}

export interface ImageStreamCallbacks {
  onAccepted?(accepted: { seeds: number[]; width: number; height: number; steps: number }): void;
  onProgress?(progress: { step: number; total_steps: number; previews: string[] }): void;
  onImage(image: GeneratedImage): void;
}

/** Run one generation (any action); resolves when the stream ends, or early when stopped. */
export async function generateImages(api: Api, body: unknown, callbacks: ImageStreamCallbacks, signal: AbortSignal): Promise<{ stopped: boolean }> {
  let response: Response;
  try {
    response = await api.request("POST", "/ai/generate-image-stream", { json: body, signal, headers: { Accept: "text/event-stream" } });
  } catch (error) {
    if (signal.aborted) return { stopped: true };
    throw error;
  }
  try {
    await readEvents(response, (event, payload) => {
      if (event === "accepted") callbacks.onAccepted?.(payload);
      else if (event === "progress") callbacks.onProgress?.(payload);
      else if (event === "image") callbacks.onImage(payload);
    }, { status: 400, message: "the image generation failed" });
  } catch (error) {
    if (signal.aborted) return { stopped: true };
    throw error;
  }
  return { stopped: false };
}

export function base64ToBytes(text: string): Uint8Array {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

export function bytesToBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}
