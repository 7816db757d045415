// What the browser drivers share: headless Chromium with fake devices (Debian's
// /usr/bin/chromium driven by playwright-core; never `playwright install`), polling against
// a deadline, and reading the demo page's state through its `window.demo` hooks.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const STEP_TIMEOUT_MS = 20000;
const POLL_MS = 500;

const FLAGS = [
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
];

const started = Date.now();
export const since = () => Date.now() - started;
export const log = (...args) => console.error(`[e2e +${(since() / 1000).toFixed(1)}s]`, ...args);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A failed expectation; its message says what was missing.
export class Failure extends Error {}

// Polls `probe` (async, returns {done, why}) until done or the deadline; throws a Failure
// carrying the last `why` when the deadline passes. A Failure thrown by the probe ends the
// wait at once.
export async function until(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  let last = 'not checked yet';
  for (;;) {
    try {
      const r = await probe();
      if (r.done) return r;
      last = r.why;
    } catch (e) {
      if (e instanceof Failure) throw e;
      last = `probe failed: ${e.message.split('\n')[0]}`;
    }
    if (Date.now() >= deadline) throw new Failure(`${what}: not reached within ${timeoutMs} ms: ${last}`);
    await sleep(POLL_MS);
  }
}

export function parseBase(arg, usage) {
  try {
    return new URL(arg);
  } catch (e) {
    usage(`bad base URL ${JSON.stringify(arg)}: ${e.message}`);
    return null;
  }
}

export function checkChromium(usage) {
  if (!fs.existsSync(CHROMIUM)) {
    usage(`no Chromium at ${CHROMIUM} (apt-get install -y chromium chromium-driver, or set CHROMIUM_PATH)`);
  }
}

// One participant: its own Chromium with a fresh profile, and the page's console kept.
export async function openParticipant(who) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `sfu-e2e-${who}-`));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 720 },
    permissions: ['camera', 'microphone'],
  });
  const page = context.pages()[0] || (await context.newPage());
  const consoleLines = [];
  const keep = (line) => {
    consoleLines.push(line);
    if (consoleLines.length > 200) consoleLines.shift();
  };
  page.on('console', (m) => keep(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => keep(`pageerror: ${e.message}`));
  page.on('crash', () => keep('page crashed'));
  return { who, dir, context, page, consoleLines, name: null, id: null };
}

export async function closeParticipant(p) {
  try {
    await Promise.race([p.context.close(), sleep(10000)]);
  } catch (_) { /* already gone */ }
  fs.rmSync(p.dir, { recursive: true, force: true });
}

export function dumpConsole(p, lines = 60) {
  console.error(`---- ${p.who} console (last ${Math.min(p.consoleLines.length, lines)} lines)`);
  for (const line of p.consoleLines.slice(-lines)) console.error(line);
}

// The page's state as its test hooks show it.
export async function snapshot(p) {
  return p.page.evaluate(async () => {
    const d = window.demo;
    if (!d) return null;
    const tiles = Array.from(document.querySelectorAll('.tile[data-participant]')).map((t) => {
      const v = t.querySelector('video');
      return {
        id: t.dataset.participant,
        label: (t.querySelector('.label .name') || {}).textContent || '',
        videoWidth: v ? v.videoWidth : 0,
        readyState: v ? v.readyState : 0,
      };
    });
    return {
      state: d.state,
      participantId: d.participantId,
      nodeId: d.nodeId,
      url: d.url,
      fallbackUrls: d.fallbackUrls,
      joinedCount: d.joinedCount,
      recovering: d.recovering,
      recoveries: d.recoveries.slice(),
      publishState: d.publishState,
      publisher: d.publisherPc ? d.publisherPc.connectionState : 'none',
      subscriber: d.subscriberPc ? d.subscriberPc.connectionState : 'none (no subscribe_offer yet)',
      errors: d.errors.map((e) => `${e.code}: ${e.message}`),
      remotes: d.remoteParticipants(),
      stats: await d.stats(),
      tiles,
    };
  });
}

// Opens the page at `base` and joins `room` through its own form, as a person would.
export async function joinThroughForm(p, base, room, trickle) {
  const url = new URL('/', base);
  url.searchParams.set('room', room);
  url.searchParams.set('name', p.name);
  if (trickle) url.searchParams.set('trickle', '1');
  log(`${p.who}: open ${url}`);
  let res;
  try {
    res = await p.page.goto(url.toString(), { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
  } catch (e) {
    throw new Failure(`${p.who}: cannot load ${url}: ${e.message.split('\n')[0]}`);
  }
  if (!res || !res.ok()) throw new Failure(`${p.who}: GET ${url} answered ${res ? res.status() : 'nothing'}`);
  await until(`${p.who}: page script loaded`, STEP_TIMEOUT_MS, async () => {
    const ready = await p.page.evaluate(() => Boolean(window.demo) && window.demo.state === 'idle');
    return { done: ready, why: 'window.demo missing or not idle (app.js not served or broken?)' };
  });
  await p.page.fill('#room', room);
  await p.page.fill('#name', p.name);
  await p.page.click('#join');
  const r = await until(`${p.who}: joined`, STEP_TIMEOUT_MS, async () => {
    const s = await snapshot(p);
    if (!s) return { done: false, why: 'window.demo missing' };
    if (s.state === 'joined' && s.participantId) return { done: true, snap: s };
    if (s.state === 'idle' || s.state === 'closed') {
      throw new Failure(`${p.who}: join failed, page is ${s.state}; errors: ${s.errors.join(' | ') || 'none'}`);
    }
    return { done: false, why: `state=${s.state} errors=[${s.errors.join(' | ')}]` };
  });
  p.id = r.snap.participantId;
  log(`${p.who}: joined as ${p.id} on ${r.snap.nodeId}`);
  return r.snap;
}

// What `viewer` still lacks from `other`, or null when everything flows.
export function missing(viewer, other, s) {
  if (!s) return `${viewer.who}: window.demo missing`;
  if (s.state !== 'joined') return `${viewer.who}: state=${s.state} errors=[${s.errors.join(' | ')}]`;
  const remote = s.remotes.find((r) => r.id === other.id);
  if (!remote) {
    return `${viewer.who} does not list ${other.who} (${other.id}); lists [${s.remotes.map((r) => r.id).join(', ')}]`;
  }
  const st = s.stats[other.id];
  if (!st) return `${viewer.who}: no stats for ${other.who}`;
  const problems = [];
  if (!(st.video.framesDecoded > 0)) {
    problems.push(`video framesDecoded=${st.video.framesDecoded} (packets ${st.video.packetsReceived})`);
  }
  if (!(st.audio.packetsReceived > 0)) problems.push(`audio packetsReceived=${st.audio.packetsReceived}`);
  const tile = s.tiles.find((t) => t.id === other.id);
  if (!tile) problems.push('no tile');
  else if (!(tile.videoWidth > 0)) problems.push(`tile video not rendering (readyState ${tile.readyState})`);
  if (problems.length) {
    return `${viewer.who} from ${other.who}: ${problems.join(', ')}; media tracks [${remote.media.map((m) => m.kind).join(', ')}]; ` +
      `publish=${s.publishState}; publisher pc ${s.publisher}; subscriber pc ${s.subscriber}; errors=[${s.errors.join(' | ')}]`;
  }
  if (remote.name !== other.name || !tile.label.includes(other.name)) {
    return `${viewer.who} labels ${other.who} as ${JSON.stringify(remote.name)} / tile ${JSON.stringify(tile.label)}, expected ${JSON.stringify(other.name)}`;
  }
  return null;
}

export async function screenshot(p, file, result) {
  try {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    await p.page.screenshot({ path: file });
    result.screenshots.push(file);
    log(`screenshot of ${p.who} -> ${file}`);
  } catch (e) {
    log(`screenshot of ${p.who} failed: ${e.message}`);
  }
}

// The last snapshots, small enough for the result line.
export function summarize(last) {
  const out = {};
  for (const [who, s] of Object.entries(last)) {
    if (!s) continue;
    out[who] = {
      state: s.state,
      id: s.participantId,
      node: s.nodeId,
      url: s.url,
      recovering: s.recovering,
      recoveries: s.recoveries,
      publish: s.publishState,
      publisher: s.publisher,
      subscriber: s.subscriber,
      errors: s.errors,
      remotes: s.remotes.map((r) => ({ id: r.id, name: r.name, media: r.media.map((m) => m.kind) })),
      stats: s.stats,
      tiles: s.tiles,
    };
  }
  return out;
}
