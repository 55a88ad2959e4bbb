/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': ['ts-jest', { diagnostics: false }] },
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // the fault matrix and the outage test take about half an hour: npm run test:faults
  testPathIgnorePatterns: process.env.QUEUE_TEST_FAULTS ? ['/node_modules/'] : ['/node_modules/', '<rootDir>/test/e2e/(faults|outage)\\.test\\.ts$'],
  globalSetup: '<rootDir>/test/support/global-setup.ts',
  globalTeardown: '<rootDir>/test/support/global-teardown.ts',
  setupFiles: ['<rootDir>/test/support/env.ts'],
  testTimeout: 60_000,
  slowTestThreshold: 30,
};
