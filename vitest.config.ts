import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['test/setup.ts'],
    testTimeout: 300_000,
    hookTimeout: 300_000,
    pool: 'forks',
    // tfjs keeps one engine per process; files run in separate forks, two at a time (2 cores)
    maxWorkers: 2,
  },
});
