// What the browser scripts share: the environment (WSGATE_URL,
// WSGATE_PLAYWRIGHT, WSGATE_PROFILE), headless Debian Chromium through
// playwright-core, and the step log and checks.
'use strict';

const { chromium } = require(process.env.WSGATE_PLAYWRIGHT);
const path = require('path');

const base = process.env.WSGATE_URL;
const profile = process.env.WSGATE_PROFILE;
const STEP = 15000;

function step(name) { console.error(`step: ${name}`); }

function expect(what, got, want) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

// Headless Chromium with a profile whose NSS db trusts the test CA.
function launch(options = {}) {
  return chromium.launchPersistentContext(path.join(profile, 'data'), {
    executablePath: '/usr/bin/chromium',
    headless: true,
    env: { ...process.env, HOME: profile },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    ...options,
  });
}

// Run `main`; exit 0 when it resolves, 1 (with the stack) when it throws.
function run(main) {
  main().then(() => process.exit(0), (e) => { console.error(e.stack || String(e)); process.exit(1); });
}

module.exports = { base, STEP, step, expect, launch, run };
