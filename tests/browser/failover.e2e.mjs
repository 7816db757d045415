#!/usr/bin/env node
// Failover of the demo page in headless Chromium: two pages survive the death of their
// room's node without anyone clicking anything.
//
//   node failover.e2e.mjs <alice's base url> <bob's base url>
//
// Alice and Bob (each in its own Chromium, fake camera and microphone) open the page from
// two nodes of one cluster and join one random room through its form. Once each decodes the
// other's video, the driver prints a `ready` event naming the room and the node each page
// says hosts its media (`joined.node`), and waits for the harness to kill that node and
// answer on stdin. It then waits, polling against a deadline, until both pages are joined
// again (a new `joined`, no click) and each decodes the other's video on its new
// subscriber connection, frames advancing between two polls. With E2E_KILLS=n this
// repeats n times (the room's next node is killed in turn).
//
// Talking to the harness, one line each:
//   stdout  {"event":"ready","round":k,"room":..,"nodes":{"alice":..,"bob":..},"urls":{..},
//           "fallbacks":{..}}   (nodes: `joined.node`; urls: the pages' sockets)
//   stdin   killed <node id>          (anything else, or EOF, ends the run as a failure)
//   stdout  the JSON result, last: ok, reason, and per kill `kills[]`: the node, recovery_ms
//           (from reading `killed` to both pages decoding again) and per page its node
//           before and after, the socket URL before and after, and the page's own record
//           of the recovery (`window.demo.recoveries`).
// Logs go to stderr. Exit code 0 on success, 1 on failure, 2 on bad usage.
//
// Environment:
//   E2E_KILLS=n      how many times to kill the room's node (default 1)
//   E2E_REJOIN=bob   spoil bob's resume token before each kill, so that the node refuses
//                    his `resume` and the page must join afresh with a new token
//   E2E_TIMEOUT_MS   deadline for media to flow, before and after a kill (default 90000)
//   E2E_KILL_WAIT_MS how long to wait for the harness's `killed` (default 60000)
//   E2E_SCREENSHOT   write PNGs of the pages after recovery (or failure) here (`.bob.png`)
//   CHROMIUM_PATH    Chromium binary (default /usr/bin/chromium)

import readline from 'node:readline';
import {
  Failure, STEP_TIMEOUT_MS, checkChromium, closeParticipant, dumpConsole, joinThroughForm, log,
  missing, openParticipant, parseBase, screenshot, since, snapshot, summarize, until,
} from './common.mjs';

const MEDIA_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS || 90000);
const KILL_WAIT_MS = Number(process.env.E2E_KILL_WAIT_MS || 60000);
const SCREENSHOT = process.env.E2E_SCREENSHOT || '';
const REJOIN = (process.env.E2E_REJOIN || '').split(',').filter(Boolean);
const KILLS = Number(process.env.E2E_KILLS || 1);

function usage(msg) {
  console.error(`${msg}\nusage: node failover.e2e.mjs <alice's base url> <bob's base url>`);
  process.exit(2);
}

if (process.argv.length !== 4) usage('need two base URLs');
const bases = { alice: parseBase(process.argv[2], usage), bob: parseBase(process.argv[3], usage) };
checkChromium(usage);

const room = `failover-${Math.random().toString(36).slice(2, 10)}`;
const result = {
  ok: false,
  reason: null,
  room,
  bases: { alice: bases.alice.origin, bob: bases.bob.origin },
  rejoin: REJOIN,
  phases: {},
  kills: [],
  screenshots: [],
};

// Lines from the harness, one at a time.
const stdin = readline.createInterface({ input: process.stdin });
const lines = [];
let waiting = null;
let stdinClosed = false;
stdin.on('line', (line) => {
  if (waiting) {
    const w = waiting;
    waiting = null;
    w(line);
  } else {
    lines.push(line);
  }
});
stdin.on('close', () => {
  stdinClosed = true;
  if (waiting) waiting(null);
});

function nextLine(timeoutMs) {
  if (lines.length) return Promise.resolve(lines.shift());
  if (stdinClosed) return Promise.resolve(null);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      waiting = null;
      resolve(undefined);
    }, timeoutMs);
    waiting = (line) => {
      clearTimeout(timer);
      resolve(line);
    };
  });
}

function event(fields) {
  process.stdout.write(JSON.stringify(fields) + '\n');
}

// One kill: says which node hosts the pages' media, waits for the harness to kill it, then
// for both pages to be back in the call by themselves, decoding each other.
async function killRound(round, people, keepLast) {
  const [alice, bob] = people;
  for (const p of people) {
    if (REJOIN.includes(p.who)) await p.page.evaluate(() => window.demo.spoilResumeToken());
  }
  const before = {};
  for (const p of people) before[p.who] = await snapshot(p);
  const outcome = { round, node: null, recovery_ms: null, pages: {} };
  for (const p of people) {
    const s = before[p.who];
    outcome.pages[p.who] = { node_before: s.nodeId, url_before: s.url, fallbacks: s.fallbackUrls };
  }
  log(`kill ${round}: pages hosted on ${before.alice.nodeId} / ${before.bob.nodeId}, sockets to ` +
    `${before.alice.url} / ${before.bob.url}`);
  event({
    event: 'ready',
    round,
    room,
    nodes: { alice: before.alice.nodeId, bob: before.bob.nodeId },
    urls: { alice: before.alice.url, bob: before.bob.url },
    fallbacks: { alice: before.alice.fallbackUrls, bob: before.bob.fallbackUrls },
  });

  const answer = await nextLine(KILL_WAIT_MS);
  const killed = /^killed (\S+)$/.exec((answer || '').trim());
  if (!killed) {
    throw new Failure(`the harness did not report a kill: ${answer === undefined ? 'timed out' : JSON.stringify(answer)}`);
  }
  const killedAt = Date.now();
  outcome.node = killed[1];
  log(`harness killed ${killed[1]}; waiting for both pages to come back by themselves`);

  // Per viewer: frames decoded from the other at the previous poll (on the page's
  // subscriber connection since it joined again), and when it first did what.
  const prevFrames = { alice: 0, bob: 0 };
  const marks = { alice: {}, bob: {} };
  const mark = (who, what) => {
    if (marks[who][what] === undefined) marks[who][what] = Date.now() - killedAt;
  };
  await until(`kill ${round}: both pages back in the call, decoding each other`, MEDIA_TIMEOUT_MS, async () => {
    const [sa, sb] = await Promise.all([snapshot(alice), snapshot(bob)]);
    keepLast({ alice: sa, bob: sb });
    const why = [];
    for (const [viewer, other, s] of [[alice, bob, sa], [bob, alice, sb]]) {
      if (s.state === 'idle' || s.state === 'closed') {
        throw new Failure(`${viewer.who} gave up (state ${s.state}); errors: ${s.errors.join(' | ') || 'none'}`);
      }
      if (s.state !== 'joined') {
        const r = s.recovering;
        why.push(`${viewer.who} is ${s.state}${r ? ` (${r.attempts} attempts: ${r.why})` : ''}`);
        continue;
      }
      if (!(s.joinedCount > before[viewer.who].joinedCount)) {
        why.push(`${viewer.who} is joined but got no new \`joined\` (did it notice?)`);
        continue;
      }
      mark(viewer.who, 'joined_ms');
      const gap = missing(viewer, other, s);
      if (gap) {
        why.push(gap);
        continue;
      }
      const frames = s.stats[other.id].video.framesDecoded;
      const advancing = prevFrames[viewer.who] > 0 && frames > prevFrames[viewer.who];
      prevFrames[viewer.who] = frames;
      if (!advancing) {
        why.push(`${viewer.who} decodes ${frames} frames from ${other.who}, not yet advancing`);
        continue;
      }
      mark(viewer.who, 'decoding_ms');
    }
    return { done: why.length === 0, why: why.join('; ') };
  });
  outcome.recovery_ms = Date.now() - killedAt;
  log(`kill ${round}: both pages decode each other again ${outcome.recovery_ms} ms after the kill`);

  // Each page closed its recovery by itself (joining afresh where its token was spoiled).
  await until(`kill ${round}: the pages close their recoveries`, STEP_TIMEOUT_MS, async () => {
    const snaps = await Promise.all(people.map(snapshot));
    keepLast({ alice: snaps[0], bob: snaps[1] });
    const why = [];
    people.forEach((p, i) => {
      const s = snaps[i];
      const rec = s.recoveries[s.recoveries.length - 1];
      Object.assign(outcome.pages[p.who], {
        node_after: s.nodeId,
        url_after: s.url,
        joined_again_ms: marks[p.who].joined_ms,
        decoding_again_ms: marks[p.who].decoding_ms,
        recovery: rec || null,
        from_other: s.stats[(p === alice ? bob : alice).id],
      });
      if (s.recoveries.length <= before[p.who].recoveries.length) {
        why.push(`${p.who} still recovering: ${JSON.stringify(s.recovering)}`);
      } else if (rec.resumed === REJOIN.includes(p.who)) {
        throw new Failure(`${p.who} ${rec.resumed ? 'resumed' : 'joined afresh'}, expected the other: ${JSON.stringify(rec)}`);
      }
    });
    return { done: why.length === 0, why: why.join('; ') };
  });
  for (const p of people) {
    const pg = outcome.pages[p.who];
    if (pg.node_after === killed[1]) throw new Failure(`${p.who} is still hosted on the killed node ${killed[1]}`);
    log(`${p.who}: ${pg.node_before} -> ${pg.node_after} through ${pg.url_after}; joined again after ` +
      `${pg.joined_again_ms} ms, decoding after ${pg.decoding_again_ms} ms; page: ${JSON.stringify(pg.recovery)}`);
  }
  return outcome;
}

async function main() {
  let t = Date.now();
  const [alice, bob] = await Promise.all([openParticipant('alice'), openParticipant('bob')]);
  const people = [alice, bob];
  alice.name = `Alice ${Math.floor(Math.random() * 900) + 100}`;
  bob.name = `Bob ${Math.floor(Math.random() * 900) + 100}`;
  result.phases.launch_ms = Date.now() - t;

  const watchdog = setTimeout(() => {
    result.reason = result.reason || 'watchdog: the test as a whole took too long';
    finish(people, 1);
  }, (1 + KILLS) * (MEDIA_TIMEOUT_MS + KILL_WAIT_MS + STEP_TIMEOUT_MS) + 4 * STEP_TIMEOUT_MS);

  let last = {};
  try {
    t = Date.now();
    await joinThroughForm(alice, bases.alice, room, true);
    await joinThroughForm(bob, bases.bob, room, false);
    result.phases.join_ms = Date.now() - t;

    t = Date.now();
    await until('media flowing both ways', MEDIA_TIMEOUT_MS, async () => {
      const [sa, sb] = await Promise.all([snapshot(alice), snapshot(bob)]);
      last = { alice: sa, bob: sb };
      const why = [missing(alice, bob, sa), missing(bob, alice, sb)].filter(Boolean);
      return { done: why.length === 0, why: why.join('; ') };
    });
    result.phases.media_ms = Date.now() - t;

    for (let round = 1; round <= KILLS; round++) {
      const outcome = await killRound(round, people, (snaps) => { last = snaps; });
      result.kills.push(outcome);
    }
    result.recovery_ms = Math.max(...result.kills.map((k) => k.recovery_ms));

    if (SCREENSHOT) {
      await screenshot(alice, SCREENSHOT, result);
      await screenshot(bob, SCREENSHOT.replace(/(\.png)?$/i, '.bob.png'), result);
    }
    result.ok = true;
    clearTimeout(watchdog);
    await finish(people, 0);
  } catch (e) {
    result.reason = e instanceof Failure ? e.message : `unexpected: ${e.stack || e}`;
    result.last = summarize(last);
    clearTimeout(watchdog);
    if (SCREENSHOT) {
      await screenshot(alice, SCREENSHOT, result);
      await screenshot(bob, SCREENSHOT.replace(/(\.png)?$/i, '.bob.png'), result);
    }
    for (const p of people) dumpConsole(p, 80);
    await finish(people, 1);
  }
}

let finishing = false;
async function finish(people, code) {
  if (finishing) return;
  finishing = true;
  result.elapsed_ms = since();
  stdin.close();
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
