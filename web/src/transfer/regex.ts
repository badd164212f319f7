// The SDK's check_regex (importers/checks.py): a regex key must compile and search texts built to
// trigger catastrophic backtracking within REGEX_PROBE_SECONDS each, or the file is refused.
import { ImportRefused } from "./limits";

const REGEX_PROBE_SECONDS = 0.25;
const REGEX_PROBE_RUN = 2_000;
const REGEX_PROBE_CHARS = 16;

function probes(pattern: string): string[] {
  const chars = ["a", "0"];
  for (const char of pattern) {
    if (/^[\p{L}\p{N}]$/u.test(char) && !chars.includes(char) && chars.length < REGEX_PROBE_CHARS) chars.push(char);
  }
  return [...chars.map((c) => c.repeat(REGEX_PROBE_RUN) + "\u0000"), "a ".repeat(REGEX_PROBE_RUN / 2) + "\u0000"];
}

export function checkRegex(pattern: string, path: string, caseSensitive: boolean): Promise<void> {
  const texts = probes(pattern);
  // Starting the worker is not the pattern's time: the budget counts the probes only, with one
  // more second for the worker to start on a busy machine.
  const budgetMs = texts.length * REGEX_PROBE_SECONDS * 1000 + 1000;
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL("./regex-worker.ts", import.meta.url), { type: "module" });
    const timer = setTimeout(() => {
      worker.terminate();
      reject(new ImportRefused(path, `the regular expression ${JSON.stringify(pattern.slice(0, 60))} takes too long to search ` +
        `(over ${REGEX_PROBE_SECONDS} s on a short text); simplify it`));
    }, budgetMs);
    worker.onmessage = (event) => {
      clearTimeout(timer);
      worker.terminate();
      if (event.data.error) reject(new ImportRefused(path, `is not a valid regular expression (${event.data.error})`));
      else resolve();
    };
    worker.onerror = (event) => {
      clearTimeout(timer);
      worker.terminate();
      reject(new Error(`the regular expression check failed: ${event.message}`));
    };
    worker.postMessage({ pattern, caseSensitive, probes: texts });
  });
}
