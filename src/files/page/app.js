// wsgate's chat page: a JSON-hub chat with presence and private messages,
// an echo panel with the round-trip time, and a raw room that Qt chat
// clients ({"src","dst","msg"} frames) share. Every socket reconnects on
// its own 3 s after it drops, until Disconnect is pressed.
'use strict';

const RETRY_MS = 3000;
const CHANNEL = 'chat';      // the JSON hub's channel
const ROOM = 'lobby';        // the raw room (a channel of its own)
const $ = (id) => document.getElementById(id);

let wanted = false;          // the user asked to be connected
let me = '';                 // the name the hub gave us
const people = new Set();
const sockets = {};          // name -> { ws, timer }
let echoSentAt = 0;

function base() {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}`;
}

function query() {
  const q = new URLSearchParams();
  const name = $('name').value.trim();
  const token = $('token').value.trim();
  if (name) q.set('name', name);
  if (token) q.set('token', token);
  const s = q.toString();
  return s ? `?${s}` : '';
}

function line(list, text, cls) {
  const li = document.createElement('li');
  li.textContent = text;
  if (cls) li.className = cls;
  const log = $(list);
  log.appendChild(li);
  while (log.children.length > 500) log.removeChild(log.firstChild);
  log.scrollTop = log.scrollHeight;
}

function setStatus(text, cls) {
  const s = $('status');
  s.textContent = text;
  s.className = `status ${cls}`;
}

function refreshStatus() {
  const open = Object.values(sockets).filter((s) => s.ws && s.ws.readyState === WebSocket.OPEN).length;
  const total = Object.keys(sockets).length;
  if (!wanted) setStatus('disconnected', 'off');
  else if (open === total && total > 0) setStatus(`connected as ${me || '…'}`, 'on');
  else if (Object.values(sockets).some((s) => s.timer)) setStatus('disconnected, reconnecting in 3 s', 'retry');
  else setStatus('connecting…', 'retry');
  const chatOpen = sockets.chat && sockets.chat.ws && sockets.chat.ws.readyState === WebSocket.OPEN;
  const echoOpen = sockets.echo && sockets.echo.ws && sockets.echo.ws.readyState === WebSocket.OPEN;
  const rawOpen = sockets.raw && sockets.raw.ws && sockets.raw.ws.readyState === WebSocket.OPEN;
  for (const id of ['message', 'send']) $(id).disabled = !chatOpen;
  for (const id of ['echo-message', 'echo-send']) $(id).disabled = !echoOpen;
  for (const id of ['raw-dst', 'raw-message', 'raw-send']) $(id).disabled = !rawOpen;
  $('connect').disabled = wanted;
  $('disconnect').disabled = !wanted;
}

// Open socket `key` and keep it open: on a drop, try again in 3 s.
function keep(key, path, protocols, handlers) {
  const slot = sockets[key] || (sockets[key] = { ws: null, timer: null });
  slot.timer = null;
  const ws = new WebSocket(base() + path, protocols);
  slot.ws = ws;
  ws.addEventListener('open', () => { handlers.open(ws); refreshStatus(); });
  ws.addEventListener('message', (ev) => handlers.message(ev.data));
  ws.addEventListener('close', (ev) => {
    if (slot.ws !== ws) return;
    slot.ws = null;
    if (handlers.close) handlers.close(ev);
    if (wanted) {
      slot.timer = setTimeout(() => { if (wanted) keep(key, path, protocols, handlers); }, RETRY_MS);
    }
    refreshStatus();
  });
}

function showPeople() {
  const list = $('people');
  list.textContent = '';
  const to = $('to');
  const chosen = to.value;
  to.textContent = '';
  const all = document.createElement('option');
  all.value = '';
  all.textContent = 'everyone';
  to.appendChild(all);
  for (const name of [...people].sort()) {
    const li = document.createElement('li');
    li.textContent = name === me ? `${name} (you)` : name;
    li.dataset.name = name;
    list.appendChild(li);
    if (name === me) continue;
    const opt = document.createElement('option');
    opt.value = name;
    opt.textContent = name;
    to.appendChild(opt);
  }
  to.value = people.has(chosen) ? chosen : '';
}

function text(data) {
  if (data && typeof data === 'object' && typeof data.text === 'string') return data.text;
  return typeof data === 'string' ? data : JSON.stringify(data);
}

const chat = {
  open(ws) {
    ws.send(JSON.stringify({ type: 'subscribe', channel: CHANNEL }));
    ws.send(JSON.stringify({ type: 'presence', channel: CHANNEL }));
  },
  message(raw) {
    let m;
    try { m = JSON.parse(raw); } catch { return; }
    switch (m.type) {
      case 'welcome': me = m.client; line('log', `connected as ${me}`, 'event'); refreshStatus(); break;
      case 'presence': people.clear(); for (const c of m.clients) people.add(c); showPeople(); break;
      case 'join': people.add(m.client); showPeople(); line('log', `${m.client} joined`, 'event'); break;
      case 'leave': people.delete(m.client); showPeople(); line('log', `${m.client} left`, 'event'); break;
      case 'message': line('log', `${m.from || '?'}: ${text(m.data)}`); break;
      case 'direct':
        // A name's direct messages reach all its connections: a raw-room
        // frame ({"src","msg"}) is shown by the raw panel, not here.
        if (m.data && typeof m.data === 'object' && 'msg' in m.data) break;
        line('log', `${m.from || '?'} (private): ${text(m.data)}`, 'private');
        break;
      case 'error': line('log', `error: ${m.message}`, 'event'); break;
      default: break;
    }
  },
  close(ev) {
    people.clear();
    showPeople();
    line('log', `disconnected (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`, 'event');
  },
};

const echo = {
  open() {},
  message(data) {
    const rtt = performance.now() - echoSentAt;
    $('echo-reply').textContent = typeof data === 'string' ? data : '(binary)';
    $('echo-rtt').textContent = `(round trip ${rtt.toFixed(1)} ms)`;
  },
};

const raw = {
  open() { line('raw-log', 'joined the raw room', 'event'); },
  message(data) {
    if (typeof data !== 'string') return;
    let m;
    try { m = JSON.parse(data); } catch { line('raw-log', data); return; }
    // A private message of the JSON chat ({"text"}) is shown by the chat panel.
    if (m && typeof m === 'object' && !('msg' in m) && 'text' in m) return;
    const priv = m.dst ? ' (private)' : '';
    line('raw-log', `${m.src || '?'}${priv}: ${m.msg === undefined ? data : m.msg}`, priv ? 'private' : '');
  },
  close() { line('raw-log', 'left the raw room', 'event'); },
};

function connect() {
  wanted = true;
  const q = query();
  keep('chat', `/chat${q}`, ['wsgate.json'], chat);
  keep('echo', `/echo${q}`, ['echo'], echo);
  keep('raw', `/room/${ROOM}${q}`, ['wsgate.raw'], raw);
  refreshStatus();
}

function disconnect() {
  wanted = false;
  for (const slot of Object.values(sockets)) {
    clearTimeout(slot.timer);
    slot.timer = null;
    if (slot.ws) slot.ws.close(1000, 'bye');
  }
  refreshStatus();
}

function sendChat(ev) {
  ev.preventDefault();
  const input = $('message');
  const body = input.value;
  const ws = sockets.chat && sockets.chat.ws;
  if (!body || !ws || ws.readyState !== WebSocket.OPEN) return;
  const to = $('to').value;
  if (to) {
    ws.send(JSON.stringify({ type: 'send', to, data: { text: body } }));
    line('log', `me → ${to} (private): ${body}`, 'private mine');
  } else {
    ws.send(JSON.stringify({ type: 'publish', channel: CHANNEL, data: { text: body } }));
    line('log', `${me || 'me'}: ${body}`, 'mine');
  }
  input.value = '';
}

function sendEcho(ev) {
  ev.preventDefault();
  const ws = sockets.echo && sockets.echo.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  echoSentAt = performance.now();
  ws.send($('echo-message').value);
}

function sendRaw(ev) {
  ev.preventDefault();
  const ws = sockets.raw && sockets.raw.ws;
  const msg = $('raw-message').value;
  if (!msg || !ws || ws.readyState !== WebSocket.OPEN) return;
  const frame = { src: me || $('name').value.trim(), msg };
  const dst = $('raw-dst').value.trim();
  if (dst) frame.dst = dst;
  ws.send(JSON.stringify(frame));
  line('raw-log', `${frame.src}${dst ? ` → ${dst} (private)` : ''}: ${msg}`, 'mine');
  $('raw-message').value = '';
}

document.addEventListener('DOMContentLoaded', () => {
  const saved = sessionStorage.getItem('wsgate-name');
  if (saved) $('name').value = saved;
  $('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (wanted) return;
    sessionStorage.setItem('wsgate-name', $('name').value.trim());
    connect();
  });
  $('disconnect').addEventListener('click', disconnect);
  $('send-form').addEventListener('submit', sendChat);
  $('echo-form').addEventListener('submit', sendEcho);
  $('raw-form').addEventListener('submit', sendRaw);
  $('people').addEventListener('click', (ev) => {
    const name = ev.target.dataset && ev.target.dataset.name;
    if (name && name !== me) $('to').value = name;
  });
  refreshStatus();
});
