import react from '@vitejs/plugin-react';
import { defineConfig } from 'vitest/config';

// Served by the API under /ui (serve_apps/api.py); `npm run dev` proxies the API calls to a
// local `make run` (127.0.0.1:8000).
export default defineConfig({
  base: '/ui/',
  plugins: [react()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // MUI + D3 in one bundle is ~700 kB (~210 kB gzipped); one request, cached for good.
    chunkSizeWarningLimit: 1200,
  },
  server: {
    proxy: { '/v1': 'http://127.0.0.1:8000' },
  },
  test: {
    environment: 'node',
    include: ['src/**/*.test.ts'],
  },
});
