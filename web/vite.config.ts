// The editor is a static bundle the gateway serves (docs/web.md): hashed file names under
// assets/, nothing loaded from elsewhere at run time.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  worker: { format: "es" },
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    chunkSizeWarningLimit: 2000,
  },
});
