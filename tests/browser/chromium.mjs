// What every browser run shares: its environment variables, its step log, and Debian's
// Chromium started headless as this machine allows (no sandbox as root, no background
// networking, which this closed network refuses).
import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

export const stepper = (who) => (what) => process.stderr.write(`${who}: ${what}\n`);

export const launch = (options = {}) =>
  chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'pc-chromium-')), {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    ...options,
  });
