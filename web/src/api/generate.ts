// Streaming a continuation from POST /ai/generate-stream (Server-Sent Events, gateway/sse.py):
// events `context`, `piece` (text of one or more tokens), `final`, or `error`. The request is a
// fetch so that it can carry the bearer token and be stopped with an AbortSignal (stopping
// closes the connection, which cancels the generation on the server).
import type { Api } from "./client";
import { readEvents } from "./sse";

export interface GenerateCallbacks {
  onPiece(text: string): void;
  onContext?(report: unknown): void;
}

export interface GenerateOutcome {
  stopped: boolean;
  final: any | null;
}

export async function generateStream(api: Api, body: unknown, callbacks: GenerateCallbacks,
                                     signal: AbortSignal): Promise<GenerateOutcome> {
  let response: Response;
  try {
    response = await api.request("POST", "/ai/generate-stream", { json: body, signal, headers: { Accept: "text/event-stream" } });
  } catch (error) {
    if (signal.aborted) return { stopped: true, final: null };
    throw error;
  }
  let final: any = null;
  try {
    await readEvents(response, (event, payload) => {
      if (event === "piece") callbacks.onPiece(payload.text);
      else if (event === "context") callbacks.onContext?.(payload);
      else if (event === "final") final = payload;
    }, { status: 500, message: "the generation failed" });
  } catch (error) {
    if (signal.aborted) return { stopped: true, final: null };
    throw error;
  }
  return { stopped: false, final };
}
