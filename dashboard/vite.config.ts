import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// During `npm run dev` the API is fleet-stats on :8080.
export default defineConfig({
  plugins: [react()],
  server: { proxy: { "/api": { target: "http://127.0.0.1:8080", ws: true } } },
  build: { chunkSizeWarningLimit: 1500 },
  test: { include: ["tests/**/*.test.ts"] },
});
