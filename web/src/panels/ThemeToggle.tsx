// Light or dark: the system's choice (prefers-color-scheme) until the writer picks one here; the
// pick is a display preference kept in localStorage (nothing of the account).
import { useState } from "preact/hooks";

type Theme = "system" | "light" | "dark";
const KEY = "fabula-theme";
const NEXT: Record<Theme, Theme> = { system: "dark", dark: "light", light: "system" };
const LABEL: Record<Theme, string> = { system: "Theme: system", dark: "Theme: dark", light: "Theme: light" };

export function applyStoredTheme(): void {
  const stored = localStorage.getItem(KEY);
  if (stored === "light" || stored === "dark") document.documentElement.dataset.theme = stored;
}

export function ThemeToggle() {
  const [theme, setTheme] = useState<Theme>(() => {
    const stored = localStorage.getItem(KEY);
    return stored === "light" || stored === "dark" ? stored : "system";
  });
  const pick = () => {
    const next = NEXT[theme];
    if (next === "system") {
      localStorage.removeItem(KEY);
      delete document.documentElement.dataset.theme;
    } else {
      localStorage.setItem(KEY, next);
      document.documentElement.dataset.theme = next;
    }
    setTheme(next);
  };
  return <button type="button" class="theme-toggle" onClick={pick} data-theme-choice={theme}
    title="Switch between the system's theme, dark and light">{LABEL[theme]}</button>;
}
