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
    // A node serving HTTPS/WSS with a test certificate (browser_demo.rs).
    ignoreHTTPSErrors: process.env.E2E_TLS_INSECURE === '1',
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
  // The node writes its own RTCP sender reports (the browser's lip sync and round-trip time
  // rest on them); Chromium counts them in the stream's remote-outbound-rtp.
  for (const kind of ['video', 'audio']) {
    if (!(st[kind].senderReports > 0)) problems.push(`no ${kind} sender report yet`);
  }
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

// ---------------------------------------------------------------- ICE over TCP only

// Runs in the page before its own script (`restrictToIceTcp`): the page's peer connections
// behave as behind a firewall that drops UDP. Every UDP candidate is hidden, both ways: the
// node's (`setRemoteDescription`, `addIceCandidate`), so the browser checks only the node's
// passive TCP candidate (RFC 6544), and the browser's own (`localDescription` and the
// `icecandidate` events the page sends on), so the node never checks a UDP path to the
// browser either (that would give the browser a peer-reflexive UDP pair). What was dropped
// and kept is counted in `window.__iceTcp`.
function iceTcpOnly() {
  const P = RTCPeerConnection.prototype;
  const seen = { remoteUdpDropped: 0, remoteKept: 0, localUdpDropped: new Set() };
  window.__iceTcp = {
    get remoteUdpDropped() { return seen.remoteUdpDropped; },
    get remoteKept() { return seen.remoteKept; },
    get localUdpDropped() { return seen.localUdpDropped.size; },
  };
  const isUdp = (c) => /^(a=)?candidate:\S+\s+\d+\s+udp\s/i.test(String(c || '').trim());
  const candidateOf = (c) => (c && typeof c === 'object' ? c.candidate : c);
  // Removes the UDP `a=candidate` lines; `remote` says whose they are, for the counts.
  const filterSdp = (sdp, remote) => String(sdp || '').split('\r\n').filter((line) => {
    if (!line.startsWith('a=candidate:')) return true;
    if (!isUdp(line)) {
      if (remote) seen.remoteKept += 1;
      return true;
    }
    if (remote) seen.remoteUdpDropped += 1;
    else seen.localUdpDropped.add(line);
    return false;
  }).join('\r\n');

  const setRemote = P.setRemoteDescription;
  P.setRemoteDescription = function (desc, ...rest) {
    if (desc && typeof desc.sdp === 'string') desc = { type: desc.type, sdp: filterSdp(desc.sdp, true) };
    return setRemote.call(this, desc, ...rest);
  };
  const addCandidate = P.addIceCandidate;
  P.addIceCandidate = function (c, ...rest) {
    if (isUdp(candidateOf(c))) {
      seen.remoteUdpDropped += 1;
      return Promise.resolve();
    }
    if (candidateOf(c)) seen.remoteKept += 1;
    return addCandidate.call(this, c, ...rest);
  };
  for (const name of ['localDescription', 'currentLocalDescription', 'pendingLocalDescription']) {
    const d = Object.getOwnPropertyDescriptor(P, name);
    if (!d || !d.get) continue;
    Object.defineProperty(P, name, {
      configurable: true,
      enumerable: d.enumerable,
      get() {
        const v = d.get.call(this);
        return v && new RTCSessionDescription({ type: v.type, sdp: filterSdp(v.sdp, false) });
      },
    });
  }
  // `icecandidate` listeners and `onicecandidate` never hear of a UDP candidate.
  const wrapped = new WeakMap();
  const tcpOnly = (listener) => {
    if (typeof listener !== 'function' && !(listener && typeof listener.handleEvent === 'function')) return listener;
    if (!wrapped.has(listener)) {
      wrapped.set(listener, function (ev) {
        if (ev && ev.candidate && isUdp(ev.candidate.candidate)) {
          seen.localUdpDropped.add(ev.candidate.candidate);
          return undefined;
        }
        return typeof listener === 'function' ? listener.call(this, ev) : listener.handleEvent(ev);
      });
    }
    return wrapped.get(listener);
  };
  const add = P.addEventListener;
  const remove = P.removeEventListener;
  P.addEventListener = function (type, listener, ...rest) {
    return add.call(this, type, type === 'icecandidate' ? tcpOnly(listener) : listener, ...rest);
  };
  P.removeEventListener = function (type, listener, ...rest) {
    const l = type === 'icecandidate' && listener && wrapped.has(listener) ? wrapped.get(listener) : listener;
    return remove.call(this, type, l, ...rest);
  };
  const on = Object.getOwnPropertyDescriptor(P, 'onicecandidate');
  if (on && on.set) {
    Object.defineProperty(P, 'onicecandidate', {
      configurable: true,
      enumerable: on.enumerable,
      get() { return on.get.call(this); },
      set(f) { on.set.call(this, typeof f === 'function' ? tcpOnly(f) : f); },
    });
  }
}

// Hides every UDP candidate from `p`'s peer connections (see `iceTcpOnly`); call before the
// page loads.
export async function restrictToIceTcp(p) {
  await p.page.addInitScript(iceTcpOnly);
}

// Each of `p`'s peer connections (publisher, subscriber): its state, its selected candidate
// pair (the transport's `selectedCandidatePairId`, else the nominated succeeded pair) with
// both candidates, and how many candidates its remote description holds; plus what the
// ICE-TCP filter dropped, when it runs.
export async function selectedPairs(p) {
  return p.page.evaluate(async () => {
    const out = { filter: null };
    if (window.__iceTcp) {
      const f = window.__iceTcp;
      out.filter = { remoteUdpDropped: f.remoteUdpDropped, remoteKept: f.remoteKept, localUdpDropped: f.localUdpDropped };
    }
    const d = window.demo;
    for (const [which, pc] of [['publisher', d && d.publisherPc], ['subscriber', d && d.subscriberPc]]) {
      if (!pc) {
        out[which] = null;
        continue;
      }
      const report = await pc.getStats();
      const byId = new Map();
      report.forEach((r) => byId.set(r.id, r));
      let pair = null;
      report.forEach((r) => {
        if (r.type === 'transport' && r.selectedCandidatePairId && byId.has(r.selectedCandidatePairId)) {
          pair = byId.get(r.selectedCandidatePairId);
        }
      });
      if (!pair) {
        report.forEach((r) => {
          if (!pair && r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') pair = r;
        });
      }
      const candidate = (id) => {
        const c = id && byId.get(id);
        if (!c) return null;
        return { protocol: c.protocol, type: c.candidateType, tcpType: c.tcpType || null, address: c.address || c.ip, port: c.port };
      };
      const pairs = [];
      report.forEach((r) => {
        if (r.type !== 'candidate-pair') return;
        const l = candidate(r.localCandidateId);
        const c = candidate(r.remoteCandidateId);
        pairs.push(`${l ? `${l.protocol} ${l.type} ${l.address}:${l.port}` : '?'} -> ${c ? `${c.protocol} ${c.type} ${c.address}:${c.port}` : '?'} ` +
          `${r.state}${r.nominated ? ' nominated' : ''}${r === pair ? ' selected' : ''} sent ${r.bytesSent || 0} received ${r.bytesReceived || 0}`);
      });
      const remoteSdp = pc.remoteDescription ? pc.remoteDescription.sdp : null;
      out[which] = {
        connection: pc.connectionState,
        ice: pc.iceConnectionState,
        remoteCandidates: remoteSdp === null ? null : (remoteSdp.match(/^a=candidate:/gm) || []).length,
        pair: pair && {
          state: pair.state,
          nominated: Boolean(pair.nominated),
          bytesSent: pair.bytesSent || 0,
          bytesReceived: pair.bytesReceived || 0,
          local: candidate(pair.localCandidateId),
          remote: candidate(pair.remoteCandidateId),
        },
        pairs,
      };
    }
    return out;
  });
}
