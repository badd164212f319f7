// Exactly what the model saw for the last generation: the text service's context report (the
// `context` event of /ai/generate-stream; ContextReport in gateway/schemas/text.py), block by
// block with whether each block went in and why, then the assembled prompt itself.
export interface ContextReportEntry {
  source: string;
  included: boolean;
  reason: string;
  tokens: number;
  trimmed_tokens: number;
}

export interface ContextReport {
  entries: ContextReportEntry[];
  prompt_tokens: number;
  budget_tokens: number;
  prompt: string;
}

export function ContextViewer({ report }: { report: ContextReport | null }) {
  if (!report) {
    return (
      <section aria-labelledby="context-title">
        <h2 id="context-title">Context</h2>
        <p class="hint">Send to generate: the context the model saw for the last generation is shown here.</p>
      </section>
    );
  }
  return (
    <section aria-labelledby="context-title" class="context-viewer">
      <h2 id="context-title">Context</h2>
      <p data-prompt-tokens={report.prompt_tokens}>
        The last generation read <strong>{report.prompt_tokens}</strong> tokens of a budget of {report.budget_tokens}.
      </p>
      <table class="context-report">
        <caption class="visually-hidden">Blocks of the context, in or out, and why</caption>
        <thead><tr><th scope="col">Block</th><th scope="col">In</th><th scope="col">Tokens</th><th scope="col">Why</th></tr></thead>
        <tbody>
          {report.entries.map((entry) => (
            <tr class={entry.included ? "in" : "out"} data-source={entry.source} data-included={entry.included ? "yes" : "no"}>
              <th scope="row">{entry.source}</th>
              <td>{entry.included ? "in" : "out"}</td>
              <td>{entry.tokens}{entry.trimmed_tokens ? ` (${entry.trimmed_tokens} trimmed)` : ""}</td>
              <td>{entry.reason}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <h3>The prompt, as sent to the model</h3>
      <pre class="context-prompt" tabIndex={0} aria-label="The prompt the model read">{report.prompt}</pre>
    </section>
  );
}
