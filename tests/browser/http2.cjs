// The chat page over HTTP/2 in headless Chromium: the page loads over h2,
// and its WebSockets open inside that connection as extended CONNECT
// streams (RFC 8441). The Rust test (tests/browser.rs) checks wsgate's
// metrics afterwards. Environment as for chat.cjs.
'use strict';

const { base, STEP, step, expect, launch, run } = require('./common.cjs');

async function main() {
  const context = await launch();
  try {
    step('the page loads over HTTP/2');
    const page = await context.newPage();
    page.on('console', (m) => console.error(`[console] ${m.text()}`));
    await page.goto(`${base}/`);
    expect('page protocol', await page.evaluate(
      () => performance.getEntriesByType('navigation')[0].nextHopProtocol), 'h2');

    step('the chat connects, and an echo with deflate answers');
    await page.fill('#name', 'ann');
    await page.click('#connect');
    await page.waitForFunction(
      () => document.getElementById('status').textContent === 'connected as ann',
      null, { timeout: STEP });
    const big = JSON.stringify(Array.from({ length: 200 }, (_, i) => ({ id: i, name: `item ${i}` })));
    expect('echo', await page.evaluate(([url, text]) => new Promise((resolve) => {
      const ws = new WebSocket(url, ['chat']);
      ws.onopen = () => ws.send(text);
      ws.onmessage = (ev) => {
        resolve({ same: ev.data === text, protocol: ws.protocol, deflate: ws.extensions.startsWith('permessage-deflate') });
        ws.close();
      };
      ws.onclose = (ev) => resolve({ closed: ev.code });
    }), [`${base.replace('https:', 'wss:')}/echo`, big]), { same: true, protocol: 'chat', deflate: true });
    console.log('ok');
  } finally {
    await context.close();
  }
}

run(main);
