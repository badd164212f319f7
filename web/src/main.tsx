import { render } from "preact";
import { App } from "./app";
import { applyStoredTheme } from "./panels/ThemeToggle";
import "./style.css";

declare global {
  interface Window {
    fabulaSelfTest(encryptionVectors: string, formatVectors: string): Promise<unknown>;
  }
}

// The browser's crypto against docs/*-vectors.json, on demand (the tests call it; so can anyone
// who wants to check this browser).
window.fabulaSelfTest = async (enc, fmt) => (await import("./selftest")).run(enc, fmt);

applyStoredTheme();
render(<App />, document.getElementById("app")!);
