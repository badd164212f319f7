// A token count that follows the text as it is typed: the gateway's tokenize route
// (POST /ai/tokenize, docs/text.md), asked again only after a quiet moment, and only for the
// newest text (an older answer that arrives late is dropped).
import { useEffect, useRef, useState } from "preact/hooks";
import type { Api } from "../api/client";

/** Quiet time after the last keystroke before the text is tokenized again. */
const DEBOUNCE_MS = 400;

export function useTokenCount(api: Api, text: string, model = ""): { count: number | null; error: string } {
  const [count, setCount] = useState<number | null>(null);
  const [error, setError] = useState("");
  const asked = useRef(0);
  useEffect(() => {
    const ask = ++asked.current;
    if (!text) {
      setCount(0);
      return;
    }
    const timer = window.setTimeout(async () => {
      try {
        const response = await api.request("POST", "/ai/tokenize", { json: { model, text } });
        const reply = await response.json();
        if (ask === asked.current) {
          setCount(reply.token_ids.length);
          setError("");
        }
      } catch (e: any) {
        if (ask === asked.current) setError(`token count unavailable: ${e?.message ?? e}`);
      }
    }, DEBOUNCE_MS);
    return () => window.clearTimeout(timer);
  }, [api, text, model]);
  return { count, error };
}

export function TokenCount({ api, text, model, label, className = "token-count" }: {
  api: Api; text: string; model?: string; label: string; className?: string;
}) {
  const { count, error } = useTokenCount(api, text, model);
  return (
    <p class={`${className} hint`} aria-live="polite" data-tokens={count ?? ""}>
      {error || `${label}: ${count === null ? "…" : count} token${count === 1 ? "" : "s"}`}
    </p>
  );
}
