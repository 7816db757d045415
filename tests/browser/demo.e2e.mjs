#!/usr/bin/env node
// End-to-end test of the demo page in headless Chromium (Debian's /usr/bin/chromium, driven
// by playwright-core; never `playwright install`).
//
//   node demo.e2e.mjs http://127.0.0.1:7880 [http://127.0.0.1:7882]
//
// With a second URL, bob opens his page there (another node of the cluster, say in another
// region, so the room spans two nodes and media crosses a relay link).
//
// Two participants ("alice" and "bob", each in its own Chromium with a fresh profile and
// fake camera/microphone) join one random room through the page's own form. The test waits,
// polling against a deadline, until each page decodes video frames and receives audio
// packets from the other, checks the tiles and names, then has bob leave and waits for his
// tile to disappear on alice's page.
//
// Prints one JSON line with the result on stdout (logs go to stderr). Exit code 0 on
// success, 1 on failure (the JSON says why), 2 on bad usage.
//
// Environment:
//   E2E_SCREENSHOT   write a PNG of alice's page here (bob's goes next to it, `.bob.png`)
//   E2E_TIMEOUT_MS   deadline for media to flow (default 90000)
//   E2E_TRICKLE      mixed (default: alice trickles everything, bob waits for gathering),
//                    all, or none
//   E2E_RESUME=1     also drop alice's signaling socket once media flows; she must resume
//                    and bob must decode her video again
//   CHROMIUM_PATH    Chromium binary (default /usr/bin/chromium)

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const MEDIA_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS || 90000);
const STEP_TIMEOUT_MS = 20000;
const POLL_MS = 500;
const SCREENSHOT = process.env.E2E_SCREENSHOT || '';
const TRICKLE = process.env.E2E_TRICKLE || 'mixed';
const RESUME = process.env.E2E_RESUME === '1';

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
const since = () => Date.now() - started;
const log = (...args) => console.error(`[e2e +${(since() / 1000).toFixed(1)}s]`, ...args);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function usage(msg) {
  console.error(`${msg}\nusage: node demo.e2e.mjs <base url, e.g. http://127.0.0.1:7880> [<bob's base url>]`);
  process.exit(2);
}

const baseArg = process.argv[2];
if (!baseArg) usage('missing base URL');
function parseBase(arg) {
  try {
    return new URL(arg);
  } catch (e) {
    usage(`bad base URL ${JSON.stringify(arg)}: ${e.message}`);
  }
}
const base = parseBase(baseArg);
const bases = { alice: base, bob: process.argv[3] ? parseBase(process.argv[3]) : base };
if (!fs.existsSync(CHROMIUM)) {
  usage(`no Chromium at ${CHROMIUM} (apt-get install -y chromium chromium-driver, or set CHROMIUM_PATH)`);
}

const room = `e2e-${Math.random().toString(36).slice(2, 10)}`;
const result = {
  ok: false,
  reason: null,
  base: base.origin,
  bob_base: bases.bob.origin,
  room,
  trickle: TRICKLE,
  phases: {},
  pages: {},
  screenshots: [],
};

class Failure extends Error {}

// Polls `probe` (async, returns {done, why}) until done or the deadline; throws a Failure
// carrying the last `why` when the deadline passes.
async function until(what, timeoutMs, probe) {
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

function trickleFor(who) {
  if (TRICKLE === 'all') return true;
  if (TRICKLE === 'none') return false;
  return who === 'alice';
}

async function openParticipant(who) {
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

async function snapshot(p) {
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

async function join(p) {
  const url = new URL('/', bases[p.who]);
  url.searchParams.set('room', room);
  url.searchParams.set('name', p.name);
  if (trickleFor(p.who)) url.searchParams.set('trickle', '1');
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
  log(`${p.who}: joined as ${p.id}`);
}

// What `viewer` still lacks from `other`, or null when everything flows.
function missing(viewer, other, s) {
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

async function screenshot(p, file) {
  try {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    await p.page.screenshot({ path: file });
    result.screenshots.push(file);
    log(`screenshot of ${p.who} -> ${file}`);
  } catch (e) {
    log(`screenshot of ${p.who} failed: ${e.message}`);
  }
}

async function main() {
  let t = Date.now();
  const [alice, bob] = await Promise.all([openParticipant('alice'), openParticipant('bob')]);
  const people = [alice, bob];
  alice.name = `Alice ${Math.floor(Math.random() * 900) + 100}`;
  bob.name = `Bob ${Math.floor(Math.random() * 900) + 100}`;
  result.phases.launch_ms = Date.now() - t;
  result.chromium = alice.context.browser() ? alice.context.browser().version() : CHROMIUM;

  const watchdog = setTimeout(() => {
    result.reason = result.reason || 'watchdog: the test as a whole took too long';
    finish(people, 1);
  }, MEDIA_TIMEOUT_MS + 4 * STEP_TIMEOUT_MS + 30000);

  try {
    t = Date.now();
    await join(alice);
    await join(bob);
    result.phases.join_ms = Date.now() - t;

    t = Date.now();
    let last = {};
    await until('media flowing both ways', MEDIA_TIMEOUT_MS, async () => {
      const [sa, sb] = await Promise.all([snapshot(alice), snapshot(bob)]);
      last = { alice: sa, bob: sb };
      for (const s of [sa, sb]) {
        if (s && (s.state === 'idle' || s.state === 'closed')) {
          throw new Failure(`a page left the call (state ${s.state}); errors: ${s.errors.join(' | ') || 'none'}`);
        }
      }
      const why = [missing(alice, bob, sa), missing(bob, alice, sb)].filter(Boolean);
      return { done: why.length === 0, why: why.join('; ') };
    }).catch((e) => {
      result.last = summarize(last);
      throw e;
    });
    result.phases.media_ms = Date.now() - t;
    const [sa, sb] = await Promise.all([snapshot(alice), snapshot(bob)]);
    result.pages.alice = { id: alice.id, name: alice.name, trickle: trickleFor('alice'), from_bob: sa.stats[bob.id] };
    result.pages.bob = { id: bob.id, name: bob.name, trickle: trickleFor('bob'), from_alice: sb.stats[alice.id] };
    log('media flows both ways', JSON.stringify({ alice: sa.stats[bob.id], bob: sb.stats[alice.id] }));

    if (SCREENSHOT) {
      await screenshot(alice, SCREENSHOT);
      await screenshot(bob, SCREENSHOT.replace(/(\.png)?$/i, '.bob.png'));
    }

    if (RESUME) {
      t = Date.now();
      // What bob receives from alice: decoded frames and the m-lines they come on.
      const fromAlice = (sb) => {
        const remote = sb && sb.remotes.find((r) => r.id === alice.id);
        return {
          frames: sb && sb.stats[alice.id] ? sb.stats[alice.id].video.framesDecoded : 0,
          mids: remote ? remote.media.map((m) => m.mid).sort().join(',') : '',
        };
      };
      const joins = await alice.page.evaluate(() => window.demo.joinedCount);
      await alice.page.evaluate(() => window.demo.dropConnection());
      await until('alice resumes after losing her socket', STEP_TIMEOUT_MS, async () => {
        const s = await alice.page.evaluate(() => ({
          state: window.demo.state,
          joins: window.demo.joinedCount,
          errors: window.demo.errors.map((e) => `${e.code}: ${e.message}`),
        }));
        if (s.state === 'idle' || s.state === 'closed') {
          throw new Failure(`alice gave up instead of resuming; errors: ${s.errors.join(' | ') || 'none'}`);
        }
        return { done: s.state === 'joined' && s.joins > joins, why: `alice is ${s.state}, ${s.joins - joins} new joined` };
      });
      // Alice's old peer connections are closed by now, so whatever bob decodes from here on
      // comes through her new publisher: more frames on the same m-lines, or any on new ones.
      const before = fromAlice(await snapshot(bob));
      await until('media flowing again after the resume', MEDIA_TIMEOUT_MS, async () => {
        const [sa, sb] = await Promise.all([snapshot(alice), snapshot(bob)]);
        const why = [missing(alice, bob, sa), missing(bob, alice, sb)].filter(Boolean);
        const now = fromAlice(sb);
        const fresh = now.mids !== before.mids ? now.frames > 0 : now.frames > before.frames;
        if (!fresh) why.push(`bob decodes no new frames from alice (${JSON.stringify(before)} -> ${JSON.stringify(now)})`);
        return { done: why.length === 0, why: why.join('; ') };
      });
      result.phases.resume_ms = Date.now() - t;
    }

    t = Date.now();
    await bob.page.click('#leave');
    await until('bob leaves', STEP_TIMEOUT_MS, async () => {
      const [sa, sb] = await Promise.all([snapshot(alice), snapshot(bob)]);
      const why = [];
      if (sb.state !== 'idle') why.push(`bob is ${sb.state}`);
      if (sa.remotes.some((r) => r.id === bob.id)) why.push("alice still lists bob (no participant_left?)");
      if (sa.tiles.some((x) => x.id === bob.id)) why.push("bob's tile is still on alice's page");
      return { done: why.length === 0, why: why.join('; ') };
    });
    result.phases.leave_ms = Date.now() - t;

    result.ok = true;
    clearTimeout(watchdog);
    await finish(people, 0);
  } catch (e) {
    result.reason = e instanceof Failure ? e.message : `unexpected: ${e.stack || e}`;
    clearTimeout(watchdog);
    if (SCREENSHOT) {
      await screenshot(alice, SCREENSHOT);
      await screenshot(bob, SCREENSHOT.replace(/(\.png)?$/i, '.bob.png'));
    }
    for (const p of people) {
      console.error(`---- ${p.who} console (last ${Math.min(p.consoleLines.length, 60)} lines)`);
      for (const line of p.consoleLines.slice(-60)) console.error(line);
    }
    await finish(people, 1);
  }
}

function summarize(last) {
  const out = {};
  for (const [who, s] of Object.entries(last)) {
    if (!s) continue;
    out[who] = {
      state: s.state,
      id: s.participantId,
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

let finishing = false;
async function finish(people, code) {
  if (finishing) return;
  finishing = true;
  result.elapsed_ms = since();
  await Promise.all(people.map(async (p) => {
    try {
      await Promise.race([p.context.close(), sleep(10000)]);
    } catch (_) { /* already gone */ }
    fs.rmSync(p.dir, { recursive: true, force: true });
  }));
  if (!result.ok) log(`FAILED: ${result.reason}`);
  else log(`OK in ${(result.elapsed_ms / 1000).toFixed(1)} s`);
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(code);
}

main().catch((e) => {
  result.reason = `could not start: ${e.stack || e}`;
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(1);
});
