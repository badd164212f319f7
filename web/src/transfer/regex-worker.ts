// Compiles imported regex keys and searches the probe texts, off the page's thread, so that a
// pattern with catastrophic backtracking can be stopped (the worker is ended) and refused.
self.onmessage = (event: MessageEvent<{ pattern: string; caseSensitive: boolean; probes: string[] }>) => {
  const { pattern, caseSensitive, probes } = event.data;
  let compiled: RegExp;
  try {
    compiled = new RegExp(pattern, caseSensitive ? "" : "i");
  } catch (error: any) {
    self.postMessage({ error: String(error?.message ?? error) });
    return;
  }
  for (const probe of probes) compiled.test(probe);
  self.postMessage({ ok: true });
};
