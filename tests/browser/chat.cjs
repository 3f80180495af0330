// The chat page in headless Chromium against a real wsgate, driven by
// playwright-core (never a browser of its own: Debian's /usr/bin/chromium).
// The Rust test (tests/browser.rs) starts the gateway and restarts it when
// this script asks on stdout ("stop-gateway", "start-gateway") and answers
// on stdin. Environment: WSGATE_URL (https://localhost:PORT),
// WSGATE_PLAYWRIGHT (the playwright-core module), WSGATE_PROFILE (a fresh
// directory: the browser's user data and an NSS db trusting the test CA),
// WSGATE_SHOTS (where the screenshots go).
'use strict';

const path = require('path');
const readline = require('readline');
const { base, STEP, step, expect, launch, run } = require('./common.cjs');

const shots = process.env.WSGATE_SHOTS;

const answers = readline.createInterface({ input: process.stdin });
const pending = [];
answers.on('line', (l) => { const r = pending.shift(); if (r) r(l.trim()); });
function ask(what) {
  return new Promise((resolve) => { pending.push(resolve); console.log(what); });
}

async function open(context, name) {
  const page = await context.newPage();
  page.on('console', (m) => console.error(`[${name} console] ${m.text()}`));
  page.on('pageerror', (e) => console.error(`[${name} error] ${e}`));
  await page.goto(`${base}/`);
  await page.fill('#name', name);
  await page.click('#connect');
  await connected(page, name);
  return page;
}

async function connected(page, name) {
  await page.waitForFunction(
    (n) => document.getElementById('status').textContent === `connected as ${n}`,
    name, { timeout: STEP });
}

async function sees(page, list, text) {
  await page.waitForFunction(
    ([id, t]) => [...document.querySelectorAll(`#${id} li`)].some((li) => li.textContent === t),
    [list, text], { timeout: STEP });
}

async function lacks(page, list, needle) {
  const all = await page.$$eval(`#${list} li`, (lis) => lis.map((l) => l.textContent));
  if (all.some((t) => t.includes(needle))) throw new Error(`${list} shows ${needle}: ${all}`);
}

async function present(page, who) {
  await page.waitForFunction(
    (names) => names.every((n) => [...document.querySelectorAll('#people li')].some((li) => li.dataset.name === n)),
    who, { timeout: STEP });
}

async function say(page, text, to = '') {
  await page.selectOption('#to', to);
  await page.fill('#message', text);
  await page.click('#send');
}

// Subprotocols as a browser sees them: open with `protocols` and report
// the selected one, or the close code of a failed connection.
async function offer(page, route, protocols) {
  return page.evaluate(([url, p]) => new Promise((resolve) => {
    const ws = new WebSocket(url, p);
    ws.onopen = () => { resolve({ open: true, protocol: ws.protocol }); ws.close(); };
    ws.onclose = (ev) => resolve({ open: false, code: ev.code });
  }), [`${base.replace('https:', 'wss:')}${route}`, protocols]);
}

async function main() {
  const context = await launch({ viewport: { width: 1200, height: 800 } });
  try {
    step('two pages connect and see each other');
    const ann = await open(context, 'ann');
    const bob = await open(context, 'bob');
    const cy = await open(context, 'cy');
    await present(ann, ['ann', 'bob', 'cy']);
    await present(bob, ['ann', 'bob', 'cy']);

    step('a message to everyone');
    await say(ann, 'hello everyone');
    await sees(bob, 'log', 'ann: hello everyone');
    await sees(cy, 'log', 'ann: hello everyone');
    await say(bob, 'hi ann');
    await sees(ann, 'log', 'bob: hi ann');

    step('a private message reaches only its target');
    await say(ann, 'psst bob', 'bob');
    await sees(bob, 'log', 'ann (private): psst bob');
    await say(ann, 'after the secret');
    await sees(cy, 'log', 'ann: after the secret');
    await lacks(cy, 'log', 'psst');

    step('the echo panel answers, with its round trip');
    await ann.fill('#echo-message', 'ping!');
    await ann.click('#echo-send');
    await ann.waitForFunction(() => document.getElementById('echo-reply').textContent === 'ping!', null, { timeout: STEP });
    const rtt = await ann.textContent('#echo-rtt');
    if (!/^\(round trip \d+\.\d ms\)$/.test(rtt)) throw new Error(`rtt: ${rtt}`);

    step('the raw room: page to page, and a Qt-style client');
    await ann.fill('#raw-message', 'raw hello');
    await ann.click('#raw-send');
    await sees(bob, 'raw-log', 'ann: raw hello');
    await bob.evaluate((url) => new Promise((resolve, reject) => {
      const qt = new WebSocket(url);
      qt.onopen = () => {
        qt.send(JSON.stringify({ src: 'qt', dst: 'ann', msg: 'hi ann, from Qt' }));
        qt.send(JSON.stringify({ src: 'qt', msg: 'hi all, from Qt' }));
        setTimeout(() => { qt.close(); resolve(); }, 200);
      };
      qt.onerror = () => reject(new Error('qt client failed'));
    }), `${base.replace('https:', 'wss:')}/room/lobby?name=qt`);
    await sees(ann, 'raw-log', 'qt (private): hi ann, from Qt');
    await sees(bob, 'raw-log', 'qt: hi all, from Qt');
    await lacks(bob, 'raw-log', 'hi ann, from Qt');

    step('subprotocols from the browser');
    expect('echo offered chat', await offer(ann, '/echo', ['nope', 'chat']), { open: true, protocol: 'chat' });
    expect('hub offered wsgate.json', await offer(ann, '/chat?name=probe', ['wsgate.json']), { open: true, protocol: 'wsgate.json' });
    expect('echo offered none it lists', await offer(ann, '/echo', ['v1.json']), { open: false, code: 1006 });
    expect('accepted without one: the browser fails it', await offer(ann, '/lax', ['v1.json']), { open: false, code: 1006 });
    expect('no offer', await offer(ann, '/lax', []), { open: true, protocol: '' });

    step('permessage-deflate with the browser: agreed, and a large echo survives both ways');
    const big = JSON.stringify(Array.from({ length: 200 }, (_, i) => ({ id: i, name: `item ${i}`, ok: i % 3 === 0 })));
    expect('compressed echo', await ann.evaluate(([url, text]) => new Promise((resolve) => {
      const ws = new WebSocket(url);
      ws.onopen = () => ws.send(text);
      ws.onmessage = (ev) => {
        resolve({ deflate: ws.extensions.startsWith('permessage-deflate'), same: ev.data === text });
        ws.close();
      };
      ws.onclose = (ev) => resolve({ closed: ev.code });
    }), [`${base.replace('https:', 'wss:')}/lax`, big]), { deflate: true, same: true });

    await ann.screenshot({ path: path.join(shots, 'chat.png'), fullPage: true });

    step('the gateway restarts: both pages say so and reconnect by themselves');
    expect('stop', await ask('stop-gateway'), 'stopped');
    for (const page of [ann, bob]) {
      await page.waitForFunction(
        () => document.getElementById('status').textContent === 'disconnected, reconnecting in 3 s',
        null, { timeout: STEP });
    }
    await ann.screenshot({ path: path.join(shots, 'reconnecting.png') });
    expect('start', await ask('start-gateway'), 'started');
    await connected(ann, 'ann');
    await connected(bob, 'bob');
    await present(ann, ['ann', 'bob']);
    await present(bob, ['ann', 'bob']);
    await say(ann, 'back again');
    await sees(bob, 'log', 'ann: back again');
    await say(bob, 'welcome back', 'ann');
    await sees(ann, 'log', 'bob (private): welcome back');
    // Each panel shows its own protocol's messages only.
    await lacks(ann, 'raw-log', 'welcome back');
    await lacks(ann, 'log', 'from Qt');
    await ann.screenshot({ path: path.join(shots, 'after-restart.png'), fullPage: true });
    console.log('ok');
  } finally {
    await context.close();
  }
}

run(main);
