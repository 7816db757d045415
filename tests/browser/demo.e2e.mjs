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
//   E2E_ICE          any (default), or tcp: both pages as behind a firewall that drops UDP
//                    (every UDP candidate hidden from their peer connections, both ways), so
//                    the node's ICE-TCP candidate is the only path. Either way the result
//                    lists each page's candidate pairs, per peer connection (`pages.*.ice`)
//   E2E_HOLD=1       once media flows both ways, print {"event":"media","ice":{..}} and wait
//                    for a line on stdin (at most 20 s; EOF goes on at once) before going on,
//                    so that the harness can look at the node while both pages are connected
//   CHROMIUM_PATH    Chromium binary (default /usr/bin/chromium)

import readline from 'node:readline';
import {
  Failure, STEP_TIMEOUT_MS, checkChromium, closeParticipant, dumpConsole, joinThroughForm, log,
  missing, openParticipant, parseBase, restrictToIceTcp, screenshot, selectedPairs, since,
  snapshot, summarize, until,
} from './common.mjs';

const MEDIA_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS || 90000);
const SCREENSHOT = process.env.E2E_SCREENSHOT || '';
const TRICKLE = process.env.E2E_TRICKLE || 'mixed';
const RESUME = process.env.E2E_RESUME === '1';
const ICE = process.env.E2E_ICE || 'any';
const HOLD = process.env.E2E_HOLD === '1';

function usage(msg) {
  console.error(`${msg}\nusage: node demo.e2e.mjs <base url, e.g. http://127.0.0.1:7880> [<bob's base url>]`);
  process.exit(2);
}

const baseArg = process.argv[2];
if (!baseArg) usage('missing base URL');
const base = parseBase(baseArg, usage);
const bases = { alice: base, bob: process.argv[3] ? parseBase(process.argv[3], usage) : base };
checkChromium(usage);
if (ICE !== 'any' && ICE !== 'tcp') usage(`E2E_ICE must be any or tcp, not ${JSON.stringify(ICE)}`);

const room = `e2e-${Math.random().toString(36).slice(2, 10)}`;
const result = {
  ok: false,
  reason: null,
  base: base.origin,
  bob_base: bases.bob.origin,
  room,
  trickle: TRICKLE,
  ice: ICE,
  phases: {},
  pages: {},
  screenshots: [],
};

function trickleFor(who) {
  if (TRICKLE === 'all') return true;
  if (TRICKLE === 'none') return false;
  return who === 'alice';
}

const join = (p) => joinThroughForm(p, bases[p.who], room, trickleFor(p.who));

// With E2E_ICE=tcp: a peer connection whose remote description kept no candidate can never
// connect (the node announced no ICE-TCP candidate), so say so instead of waiting.
function checkIceTcp(p, pairs) {
  for (const which of ['publisher', 'subscriber']) {
    const pc = pairs[which];
    if (pc && pc.remoteCandidates === 0) {
      throw new Failure(`${p.who}: the node's ${which} description has no TCP candidate left once its UDP ` +
        `ones are hidden (is ICE-TCP off on the node?); filter ${JSON.stringify(pairs.filter)}`);
    }
  }
}

// The next line on stdin (null at EOF, undefined after `timeoutMs`); only with E2E_HOLD=1.
function nextLine(timeoutMs) {
  return new Promise((resolve) => {
    const rl = readline.createInterface({ input: process.stdin });
    let settled = false;
    const done = (line) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(line);
      rl.close();
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    rl.once('line', done);
    rl.once('close', () => done(null));
  });
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
    if (ICE === 'tcp') await Promise.all(people.map(restrictToIceTcp));
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
      if (ICE === 'tcp') {
        for (const p of people) checkIceTcp(p, await selectedPairs(p));
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
    const [ia, ib] = await Promise.all([selectedPairs(alice), selectedPairs(bob)]);
    result.pages.alice.ice = ia;
    result.pages.bob.ice = ib;
    log('selected candidate pairs', JSON.stringify({ alice: ia, bob: ib }));
    if (HOLD) {
      process.stdout.write(JSON.stringify({ event: 'media', room, ice: { alice: ia, bob: ib } }) + '\n');
      const line = await nextLine(STEP_TIMEOUT_MS);
      log(`harness: ${line === undefined ? 'no answer, going on' : JSON.stringify(line)}`);
    }

    if (SCREENSHOT) {
      await screenshot(alice, SCREENSHOT, result);
      await screenshot(bob, SCREENSHOT.replace(/(\.png)?$/i, '.bob.png'), result);
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
      await screenshot(alice, SCREENSHOT, result);
      await screenshot(bob, SCREENSHOT.replace(/(\.png)?$/i, '.bob.png'), result);
    }
    for (const p of people) dumpConsole(p);
    await finish(people, 1);
  }
}

let finishing = false;
async function finish(people, code) {
  if (finishing) return;
  finishing = true;
  result.elapsed_ms = since();
  await Promise.all(people.map(closeParticipant));
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
