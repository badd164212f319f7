// Reading a Server-Sent Events response from the gateway (gateway/sse.py): every event carries
// one JSON payload; an `error` event ends the stream with the error it names. Parsing the event
// stream itself is eventsource-parser's job.
import { createParser } from "eventsource-parser";
import { ApiError } from "./client";

/** Call `onEvent(name, payload)` for each event until the stream ends. Events are handled in the
 * same task their bytes arrive in (no TextDecoderStream between), so a streamed token is applied
 * as soon as it is read. */
export async function readEvents(response: Response, onEvent: (event: string, payload: any) => void,
                                 failure: { status: number; message: string }): Promise<void> {
  let failed: ApiError | null = null;
  const parser = createParser({
    onEvent(message) {
      if (failed) return;
      const payload = JSON.parse(message.data);
      const name = message.event ?? "message";
      if (name === "error") {
        const error = payload.error ?? payload;
        failed = new ApiError(failure.status, error.code ?? "", error.message ?? failure.message, error.field ?? null);
      } else {
        onEvent(name, payload);
      }
    },
  });
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parser.feed(decoder.decode(value, { stream: true }));
    if (failed) {
      await reader.cancel();
      throw failed;
    }
  }
}
