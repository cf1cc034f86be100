import { defineConfig } from "vite";

// `npm run dev` serves the console with hot reload and forwards the edge's routes to a
// `herald serve` on 127.0.0.1:8080; `npm run build` writes dist/, which the edge embeds.
const edge = "http://127.0.0.1:8080";

export default defineConfig({
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    target: "es2022",
  },
  server: {
    proxy: {
      "/ws": { target: edge, ws: true },
      "/dev": edge,
      "/herald.v1.": edge,
    },
  },
});
