// Streaming a continuation from POST /ai/generate-stream (Server-Sent Events, gateway/sse.py):
// events `context`, `piece` (text of one or more tokens), `final`, or `error`. The request is a
// fetch so that it can carry the bearer token and be stopped with an AbortSignal (stopping
// closes the connection, which cancels the generation on the server).
import { Api, ApiError } from "./client";

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
  // Bytes are decoded as they are read (no TextDecoderStream in between: a piece is handled in the
  // same task its bytes arrive in).
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let final: any = null;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const raw = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data: string[] = [];
        for (const line of raw.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue; // a ping (comment line)
        const payload = JSON.parse(data.join("\n"));
        if (event === "piece") callbacks.onPiece(payload.text);
        else if (event === "context") callbacks.onContext?.(payload);
        else if (event === "final") final = payload;
        else if (event === "error") {
          const error = payload.error ?? payload;
          throw new ApiError(500, error.code ?? "", error.message ?? "the generation failed", error.field ?? null);
        }
      }
    }
  } catch (error) {
    if (signal.aborted) return { stopped: true, final: null };
    throw error;
  }
  return { stopped: false, final };
}
