// SFU demo client: plain JS, no build step. Speaks the client signaling protocol v1
// (PROTOCOL.md): one WebSocket to /ws, a publisher RTCPeerConnection that we offer
// (sendonly) and a subscriber RTCPeerConnection that the node offers (recvonly).
//
// URL parameters: ?room=<room> (default "demo"), ?name=<display name>, ?token=<JWT> (skips
// the dev token endpoint), ?trickle=1 (send descriptions at once and trickle every ICE
// candidate; the default waits for ICE gathering, up to a short bound, and trickles only
// what is gathered after that), ?autojoin=1.
//
// When something breaks (the socket closes without our `leave`, the node sends
// `reconnect`, a peer connection fails) the page recovers by itself as PROTOCOL.md says:
// see "recovery" below.
//
// Tests read the state through `window.demo` (see the bottom of this file).
(() => {
  'use strict';

  const PING_INTERVAL_MS = 10000;
  // No pong for this long: the socket is dead even if the browser has not noticed.
  const PONG_TIMEOUT_MS = 3 * PING_INTERVAL_MS;
  const GATHER_WAIT_MS = 2000;
  const MAX_ERRORS_SHOWN = 4;

  // Recovery (PROTOCOL.md, "What a client should do when something breaks"): a round of
  // attempts at once, then after each of these waits (the last repeats), each stretched by
  // a random fraction of itself up to RETRY_JITTER.
  const RETRY_DELAYS_MS = [0, 250, 500, 1000, 2000, 5000];
  const RETRY_JITTER = 0.5;
  // The page gives up (state `closed`) when a recovery has not succeeded within this.
  const RECOVERY_LIMIT_MS = 120000;
  // A socket not open within this counts as unreachable (the next URL is tried).
  const OPEN_TIMEOUT_MS = 5000;
  // A `resume`/`join` unanswered this long: the attempt failed. The node may first wait on
  // the participant's old node and then on the coordinators.
  const ANSWER_TIMEOUT_MS = 20000;
  // A recovery ends when a peer connection connects again, or after this long joined
  // without a new fault; a fault before that continues it (its backoff and its bound).
  const RECOVERY_SETTLE_MS = 45000;
  const TOKEN_TIMEOUT_MS = 5000;

  const params = new URLSearchParams(location.search);
  const TRICKLE_ALL = params.get('trickle') === '1';

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $('join-form'),
    room: $('room'),
    name: $('name'),
    join: $('join'),
    controls: $('controls'),
    roomLabel: $('room-label'),
    mic: $('toggle-mic'),
    cam: $('toggle-cam'),
    leave: $('leave'),
    errors: $('errors'),
    empty: $('empty'),
    grid: $('grid'),
    stateBadge: $('status-state'),
    detail: $('status-detail'),
    node: $('status-node'),
  };

  // ---------------------------------------------------------------- state

  const s = {
    state: 'idle', // idle | connecting | joined | reconnecting | closed
    session: 0, // bumped on every join/leave so stale callbacks can tell
    ws: null,
    room: null,
    userId: null,
    name: null,
    token: null,
    participantId: null,
    nodeId: null,
    resumeToken: null,
    iceServers: [],
    mediaPromise: null,
    localStream: null,
    localTile: null,
    pub: null,
    sub: null,
    publishState: 'none', // none | publishing | published | failed | unavailable
    subQueue: Promise.resolve(),
    pendingCandidates: { publisher: [], subscriber: [] },
    participants: new Map(), // id -> Participant (remote only)
    // Who left: media of theirs still named in a late subscribe_offer must not bring their
    // tile back.
    departed: new Set(),
    pingTimer: null,
    lastPong: null,
    lastHeard: 0, // when the node last sent anything
    joinedCount: 0, // `joined` messages this session: the first join and every resume
    link: 0, // bumped for every socket, so that work for an older one can tell
    wsUrl: null, // URL of the socket being used
    url: null, // URL of the socket that got the last `joined`: where to reconnect first
    fallbackUrls: [], // the last `joined.fallback_urls`
    recovery: null, // see "recovery"
    recoveries: [], // finished ones, for tests (see `window.demo.recoveries`)
    firstMessage: null, // 'join' | 'resume' for the socket being opened
    replaced: false, // the node said this user joined again elsewhere
    removed: null, // the `removed` reason: out for good, never reconnect
    errors: [],
    messages: [],
  };

  // ---------------------------------------------------------------- helpers

  function randomHex(bytes) {
    const a = new Uint8Array(bytes);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function randomName() {
    const adjectives = ['Brave', 'Calm', 'Clever', 'Eager', 'Gentle', 'Happy', 'Jolly',
      'Kind', 'Lucky', 'Merry', 'Nimble', 'Proud', 'Quiet', 'Swift', 'Witty', 'Zesty'];
    const animals = ['Otter', 'Falcon', 'Panda', 'Lynx', 'Heron', 'Koala', 'Badger', 'Fox',
      'Marten', 'Puffin', 'Gecko', 'Bison', 'Ibis', 'Wombat', 'Orca', 'Tapir'];
    const pick = (list) => list[Math.floor(Math.random() * list.length)];
    return `${pick(adjectives)} ${pick(animals)} ${Math.floor(Math.random() * 90) + 10}`;
  }

  function initials(name) {
    const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
    const letters = parts.slice(0, 2).map((p) => p[0].toUpperCase()).join('');
    return letters || '?';
  }

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function log(...args) {
    console.log('[demo]', ...args);
  }

  function setState(next) {
    s.state = next;
    ui.stateBadge.textContent = next;
    ui.stateBadge.dataset.state = next;
    document.body.dataset.state = next;
    const inCall = next !== 'idle' && next !== 'closed';
    ui.form.hidden = inCall;
    ui.controls.hidden = !inCall;
    ui.join.disabled = false;
    updateDetail();
  }

  function updateDetail() {
    const parts = [];
    if (s.participantId) parts.push(`you are ${s.participantId}`);
    if (s.pub) parts.push(`publisher ${s.pub.connectionState}`);
    else if (s.publishState === 'unavailable') parts.push('not publishing');
    if (s.sub) parts.push(`subscriber ${s.sub.connectionState}`);
    ui.detail.textContent = parts.join(' · ');
    ui.node.textContent = s.nodeId ? `node ${s.nodeId}` : '';
  }

  function showError(text, code) {
    const entry = { code: code || 'client', message: String(text), at: Date.now() };
    s.errors.push(entry);
    console.warn('[demo] error', entry.code, entry.message);
    const box = el('div', 'error');
    box.dataset.code = entry.code;
    box.appendChild(el('strong', null, entry.code));
    box.appendChild(el('span', null, entry.message));
    const close = el('button', 'close', '×');
    close.type = 'button';
    close.title = 'Dismiss';
    close.addEventListener('click', () => box.remove());
    box.appendChild(close);
    ui.errors.appendChild(box);
    while (ui.errors.children.length > MAX_ERRORS_SHOWN) ui.errors.firstChild.remove();
  }

  function send(msg) {
    const ws = s.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  function wsUrl(override) {
    if (override) {
      try {
        const u = new URL(override, location.href);
        if (u.protocol === 'http:') u.protocol = 'ws:';
        if (u.protocol === 'https:') u.protocol = 'wss:';
        if (u.pathname === '/' || u.pathname === '') u.pathname = '/ws';
        return u.toString();
      } catch (e) {
        log('bad reconnect url, using this node', override);
      }
    }
    return (location.protocol === 'https:' ? 'wss' : 'ws') + '://' + location.host + '/ws';
  }

  // Pull `a=mid` / `a=msid` / direction out of every m-section of an SDP.
  function parseSections(sdp) {
    const sections = new Map();
    const blocks = sdp.split(/\r?\nm=/).slice(1);
    for (const block of blocks) {
      const lines = block.split(/\r?\n/);
      const [kind, port] = lines[0].split(' ');
      const info = { kind, port: Number(port), mid: null, streamId: null, trackId: null, direction: 'sendrecv' };
      for (const line of lines) {
        if (line.startsWith('a=mid:')) info.mid = line.slice(6).trim();
        else if (line.startsWith('a=msid:')) {
          const [stream, track] = line.slice(7).trim().split(/\s+/);
          if (stream && stream !== '-') info.streamId = stream;
          if (track) info.trackId = track;
        } else if (/^a=(sendrecv|sendonly|recvonly|inactive)$/.test(line.trim())) {
          info.direction = line.trim().slice(2);
        }
      }
      if (info.mid !== null) sections.set(info.mid, info);
    }
    return sections;
  }

  // ---------------------------------------------------------------- layout

  function layout() {
    const tiles = ui.grid.children.length;
    ui.empty.hidden = tiles > 0;
    if (!tiles) return;
    const main = ui.grid.parentElement;
    const style = getComputedStyle(main);
    const gap = 12;
    const width = main.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const height = main.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    let best = 0;
    for (let cols = 1; cols <= tiles; cols++) {
      const rows = Math.ceil(tiles / cols);
      const byWidth = (width - gap * (cols - 1)) / cols;
      const byHeight = ((height - gap * (rows - 1)) / rows) * (16 / 9);
      best = Math.max(best, Math.min(byWidth, byHeight));
    }
    ui.grid.style.setProperty('--tile-w', `${Math.max(200, Math.floor(best))}px`);
  }
  window.addEventListener('resize', layout);

  // ---------------------------------------------------------------- tiles

  function makeTile(id, name, local) {
    const tile = el('div', 'tile no-video' + (local ? ' local' : ''));
    tile.dataset.participant = id;
    const video = el('video');
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true; // sound goes through the <audio> element
    const audio = el('audio');
    audio.autoplay = true;
    const placeholder = el('div', 'placeholder');
    const avatar = el('div', 'avatar', initials(name));
    placeholder.appendChild(avatar);
    const label = el('div', 'label');
    const nameEl = el('span', 'name', name);
    const badges = el('span', 'badges');
    label.appendChild(nameEl);
    label.appendChild(badges);
    const unmute = el('button', 'unmute', 'Click to enable sound');
    unmute.type = 'button';
    unmute.hidden = true;
    unmute.addEventListener('click', () => {
      audio.play().then(() => { unmute.hidden = true; }).catch((e) => showError(`audio: ${e.message}`));
    });
    tile.append(video, placeholder, label, unmute);
    if (!local) tile.appendChild(audio);
    return { tile, video, audio, avatar, nameEl, badges, unmute };
  }

  function setTileName(view, name) {
    view.nameEl.textContent = name;
    view.avatar.textContent = initials(name);
  }

  function refreshTile(view, stream, audioOn, videoOn) {
    const hasVideo = stream.getVideoTracks().some((t) => t.readyState === 'live') && videoOn;
    const hasAudio = stream.getAudioTracks().some((t) => t.readyState === 'live') && audioOn;
    view.tile.classList.toggle('no-video', !hasVideo);
    view.badges.textContent = '';
    if (!hasAudio) view.badges.appendChild(el('span', 'badge off', 'mic off'));
    if (!hasVideo) view.badges.appendChild(el('span', 'badge off', 'cam off'));
  }

  function playMedia(view) {
    view.video.play().catch(() => {});
    if (view.audio.srcObject && view.audio.srcObject.getAudioTracks().length) {
      view.audio.play().then(() => { view.unmute.hidden = true; }).catch((e) => {
        if (e && e.name === 'NotAllowedError') view.unmute.hidden = false;
      });
    }
  }

  // ---------------------------------------------------------------- remote participants

  // `fromMedia`: called because a track arrived, not because signaling named the participant.
  function ensureParticipant(id, name, fromMedia) {
    let p = s.participants.get(id);
    if (!p && fromMedia && s.departed.has(id)) return null;
    if (!fromMedia) s.departed.delete(id);
    if (!p) {
      p = {
        id,
        known: !fromMedia,
        name: name || id,
        tracks: new Map(), // server track id -> kind, as signalled
        media: new Map(), // MediaStreamTrack -> { serverTrackId, mid, kind }
        stream: new MediaStream(),
        view: makeTile(id, name || id, false),
      };
      p.view.video.srcObject = p.stream;
      p.view.audio.srcObject = p.stream;
      s.participants.set(id, p);
      ui.grid.appendChild(p.view.tile);
      refreshTile(p.view, p.stream, true, true);
      layout();
    } else if (name && name !== p.name) {
      p.name = name;
      setTileName(p.view, name);
    }
    if (!fromMedia) p.known = true;
    return p;
  }

  function removeParticipant(id) {
    const p = s.participants.get(id);
    if (!p) return;
    s.participants.delete(id);
    p.view.video.srcObject = null;
    p.view.audio.srcObject = null;
    p.view.tile.remove();
    layout();
  }

  function attachTrack(pid, track, info) {
    // A receiver's track can move between participants when the node recycles an m-line.
    for (const other of s.participants.values()) {
      if (other.id !== pid && other.media.has(track)) detachTrack(other, track);
    }
    const p = ensureParticipant(pid, null, true);
    if (!p) return;
    if (p.media.has(track)) {
      Object.assign(p.media.get(track), info);
      return;
    }
    p.media.set(track, info);
    p.stream.addTrack(track);
    track.addEventListener('ended', () => detachTrack(p, track));
    refreshTile(p.view, p.stream, true, true);
    playMedia(p.view);
    log('track', track.kind, 'from', pid, info);
  }

  function detachTrack(p, track) {
    if (!p.media.has(track)) return;
    p.media.delete(track);
    p.stream.removeTrack(track);
    refreshTile(p.view, p.stream, true, true);
  }

  function clearRemoteMedia() {
    for (const p of s.participants.values()) {
      for (const track of Array.from(p.media.keys())) detachTrack(p, track);
    }
  }

  // After every subscriber negotiation, make the tiles match what the node's offer says
  // is being sent: each m-section's msid names the publisher (stream id) and track.
  const streamIdOfTrack = new WeakMap(); // from ontrack, for offers without a=msid

  function reconcileSubscriber(pc, offerSdp) {
    const sections = parseSections(offerSdp);
    const live = new Map();
    for (const t of pc.getTransceivers()) {
      if (t.mid === null || t.stopped) continue;
      const info = sections.get(t.mid);
      if (!info || info.port === 0) continue;
      if (info.direction !== 'sendonly' && info.direction !== 'sendrecv') continue;
      const track = t.receiver.track;
      const pid = info.streamId || streamIdOfTrack.get(track);
      if (!pid) continue;
      live.set(track, { pid, serverTrackId: info.trackId, mid: t.mid, kind: track.kind });
    }
    for (const p of Array.from(s.participants.values())) {
      for (const track of Array.from(p.media.keys())) {
        const l = live.get(track);
        if (!l || l.pid !== p.id) detachTrack(p, track);
      }
    }
    for (const [track, info] of live) {
      attachTrack(info.pid, track, { serverTrackId: info.serverTrackId, mid: info.mid, kind: info.kind });
    }
    // Tiles that only media created go with their media.
    for (const p of Array.from(s.participants.values())) {
      if (!p.known && p.media.size === 0) removeParticipant(p.id);
    }
  }

  // ---------------------------------------------------------------- local media

  async function getLocalMedia() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error('camera and microphone need a secure page (https or localhost)');
    }
    try {
      return await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } },
      });
    } catch (e) {
      // Try with whatever exists, camera or microphone alone.
      for (const c of [{ audio: true }, { video: true }]) {
        try { return await navigator.mediaDevices.getUserMedia(c); } catch (_) { /* next */ }
      }
      throw e;
    }
  }

  function showLocalTile(stream) {
    if (!s.localTile) {
      s.localTile = makeTile('local', `${s.name} (you)`, true);
      ui.grid.prepend(s.localTile.tile);
    }
    s.localTile.video.srcObject = stream;
    updateLocalTile();
    playMedia(s.localTile);
    layout();
  }

  function updateLocalTile() {
    if (!s.localTile) return;
    const stream = s.localStream || new MediaStream();
    const micOn = stream.getAudioTracks().some((t) => t.enabled);
    const camOn = stream.getVideoTracks().some((t) => t.enabled);
    refreshTile(s.localTile, stream, micOn, camOn);
    ui.mic.textContent = micOn ? 'Mic on' : 'Mic off';
    ui.cam.textContent = camOn ? 'Camera on' : 'Camera off';
    ui.mic.classList.toggle('off', !micOn);
    ui.cam.classList.toggle('off', !camOn);
    ui.mic.disabled = stream.getAudioTracks().length === 0;
    ui.cam.disabled = stream.getVideoTracks().length === 0;
  }

  function toggle(kind) {
    if (!s.localStream) return;
    const tracks = kind === 'audio' ? s.localStream.getAudioTracks() : s.localStream.getVideoTracks();
    const on = !tracks.some((t) => t.enabled);
    for (const t of tracks) t.enabled = on;
    updateLocalTile();
  }

  // ---------------------------------------------------------------- peer connections

  // ICE: a description is sent once gathering completes (bounded by GATHER_WAIT_MS), or at
  // once with ?trickle=1. Candidates the browser reports before the description goes out
  // are already inside it; every later one is sent as a `candidate` message.
  function watchCandidates(pc, which) {
    pc.addEventListener('icecandidate', (ev) => {
      if (!pc.descriptionSent) return;
      if (!ev.candidate) {
        if (!pc.sentComplete) send({ type: 'candidate', pc: which, candidate: null });
        return;
      }
      send({ type: 'candidate', pc: which, candidate: ev.candidate.toJSON() });
    });
  }

  async function localSdp(pc) {
    if (!TRICKLE_ALL && pc.iceGatheringState !== 'complete') {
      await new Promise((resolve) => {
        const done = () => {
          clearTimeout(timer);
          pc.removeEventListener('icegatheringstatechange', check);
          resolve();
        };
        const check = () => { if (pc.iceGatheringState === 'complete') done(); };
        const timer = setTimeout(done, GATHER_WAIT_MS);
        pc.addEventListener('icegatheringstatechange', check);
      });
    }
    // Read the description and set the flag in the same task, so that each candidate is
    // either in this SDP or trickled, never lost.
    if (!pc.descriptionSent) {
      pc.descriptionSent = true;
      pc.sentComplete = pc.iceGatheringState === 'complete';
    }
    return pc.localDescription.sdp;
  }

  async function addRemoteCandidate(which, candidate) {
    const pc = which === 'publisher' ? s.pub : s.sub;
    if (!pc || !pc.remoteDescription) {
      s.pendingCandidates[which].push(candidate);
      return;
    }
    try {
      await pc.addIceCandidate(candidate || null);
    } catch (e) {
      if (candidate) log('addIceCandidate failed', which, e.message);
    }
  }

  async function flushCandidates(which) {
    const pending = s.pendingCandidates[which];
    s.pendingCandidates[which] = [];
    for (const c of pending) await addRemoteCandidate(which, c);
  }

  function newPeerConnection(which) {
    const pc = new RTCPeerConnection({ iceServers: s.iceServers, bundlePolicy: 'max-bundle' });
    watchCandidates(pc, which);
    const watch = () => {
      updateDetail();
      if (pc !== s.pub && pc !== s.sub) return;
      if (pc.connectionState === 'connected') mediaConnected();
      if (pc.connectionState === 'failed' || pc.iceConnectionState === 'failed') {
        recover(`${which} connection failed`);
      }
    };
    pc.addEventListener('connectionstatechange', watch);
    pc.addEventListener('iceconnectionstatechange', watch);
    return pc;
  }

  async function startPublishing(session, link) {
    let stream = null;
    try {
      stream = await s.mediaPromise;
    } catch (e) {
      if (session !== s.session || link !== s.link) return;
      s.publishState = 'unavailable';
      showError(`no camera or microphone: ${e.message}; joining as a viewer`, 'media');
      updateDetail();
      return;
    }
    if (session !== s.session || link !== s.link || !stream) return;
    s.localStream = stream;
    showLocalTile(stream);
    const pc = newPeerConnection('publisher');
    s.pub = pc;
    s.publishState = 'publishing';
    for (const track of stream.getTracks()) {
      pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    }
    try {
      await pc.setLocalDescription(await pc.createOffer());
      const sdp = await localSdp(pc);
      if (session !== s.session || link !== s.link || pc !== s.pub) return;
      send({ type: 'publish', sdp });
    } catch (e) {
      s.publishState = 'failed';
      showError(`publish failed: ${e.message}`);
    }
    updateDetail();
  }

  async function onPublishAnswer(sdp) {
    const pc = s.pub;
    if (!pc) return;
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp });
      s.publishState = 'published';
      await flushCandidates('publisher');
    } catch (e) {
      s.publishState = 'failed';
      showError(`publish answer rejected: ${e.message}`);
    }
    updateDetail();
  }

  function subscriberPc() {
    if (s.sub) return s.sub;
    const pc = newPeerConnection('subscriber');
    pc.addEventListener('track', (ev) => {
      const stream = ev.streams && ev.streams[0];
      if (stream) streamIdOfTrack.set(ev.track, stream.id);
      ev.track.addEventListener('unmute', () => {
        for (const p of s.participants.values()) {
          if (p.media.has(ev.track)) { refreshTile(p.view, p.stream, true, true); playMedia(p.view); }
        }
      });
    });
    s.sub = pc;
    return pc;
  }

  async function onSubscribeOffer(sdp, session, link) {
    if (session !== s.session || link !== s.link) return;
    const pc = subscriberPc();
    await pc.setRemoteDescription({ type: 'offer', sdp });
    await flushCandidates('subscriber');
    await pc.setLocalDescription(await pc.createAnswer());
    const answer = await localSdp(pc);
    if (session !== s.session || link !== s.link || pc !== s.sub) return;
    send({ type: 'subscribe_answer', sdp: answer });
    reconcileSubscriber(pc, sdp);
    updateDetail();
  }

  function closePeerConnections() {
    for (const pc of [s.pub, s.sub]) {
      if (pc) try { pc.close(); } catch (_) { /* already closed */ }
    }
    s.pub = null;
    s.sub = null;
    s.subQueue = Promise.resolve();
    s.pendingCandidates = { publisher: [], subscriber: [] };
    if (s.publishState !== 'unavailable') s.publishState = 'none';
    clearRemoteMedia();
  }

  // ---------------------------------------------------------------- signaling

  // Opens a socket to `url` and sends `first` (`join` or `resume`) once it is open.
  function connect(url, first) {
    const session = s.session;
    const link = ++s.link;
    s.wsUrl = url;
    s.firstMessage = first.type;
    s.replaced = false;
    s.removed = null;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      // A malformed URL (say, a bad fallback): as unreachable as a dead node.
      s.ws = null;
      setTimeout(() => { if (session === s.session && link === s.link) socketLost(false, `bad url ${url}`); }, 0);
      return;
    }
    s.ws = ws;
    let opened = false;
    // An address that drops packets leaves the socket CONNECTING for minutes.
    const openTimer = setTimeout(() => {
      if (ws !== s.ws || opened) return;
      s.ws = null;
      ws.close();
      socketLost(false, `no answer from ${url}`);
    }, OPEN_TIMEOUT_MS);
    ws.addEventListener('open', () => {
      if (ws !== s.ws) return;
      opened = true;
      clearTimeout(openTimer);
      ws.send(JSON.stringify(first));
      if (s.recovery) awaitAnswer(ws);
    });
    ws.addEventListener('message', (ev) => {
      if (ws !== s.ws || session !== s.session) return;
      s.lastHeard = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        showError('node sent invalid JSON');
        return;
      }
      try {
        handle(msg, session, link);
      } catch (e) {
        showError(`handling ${msg.type}: ${e.message}`);
      }
    });
    ws.addEventListener('close', (ev) => {
      clearTimeout(openTimer);
      if (ws !== s.ws || session !== s.session) return;
      s.ws = null;
      const why = `connection ${opened ? 'lost' : 'failed'} (${ev.code}${ev.reason ? ' ' + ev.reason : ''})`;
      socketLost(opened, why);
    });
  }

  // Closes the current socket without it counting as lost.
  function dropSocket() {
    const ws = s.ws;
    s.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'reconnecting');
  }

  // The socket closed, or never opened, without our `leave`.
  function socketLost(opened, why) {
    if (s.state === 'connecting') {
      showError(`could not join: ${why}`, 'network');
      teardown('idle');
    } else if (s.state === 'joined' && s.replaced) {
      // This user joined again elsewhere, which replaced this participant: coming back
      // would only take the call away from that other page.
      showError(`disconnected: this user joined from another page (${why})`, 'network');
      teardown('closed');
    } else if (s.state === 'joined') {
      recover(why);
    } else if (s.state === 'reconnecting') {
      attemptFailed(why, !opened);
    }
  }

  function startPing() {
    clearInterval(s.pingTimer);
    s.lastHeard = Date.now();
    s.pingTimer = setInterval(() => {
      // Whatever the node sends proves the socket alive; silence past the bound means a
      // socket the browser has not yet found dead (a frozen node, a cut path).
      if (Date.now() - s.lastHeard > PONG_TIMEOUT_MS) {
        recover('the node stopped answering');
        return;
      }
      send({ type: 'ping' });
    }, PING_INTERVAL_MS);
  }

  // ---------------------------------------------------------------- recovery
  //
  // PROTOCOL.md, "What a client should do when something breaks". A fault (the socket
  // lost, a `reconnect`, a peer connection `failed`, the node silent) starts a recovery:
  // the media connections close, the state becomes `reconnecting`, and rounds of attempts
  // run, the first at once, the next after 0.25, 0.5, 1, 2, 5, 5, ... s (jittered). A round
  // tries the target (the `reconnect` URL, else the URL of the last `joined`) and, where a
  // URL cannot be reached (the socket closes before it opens), the last
  // `joined.fallback_urls` in turn. Each attempt sends `resume`; refused with
  // `unauthorized` or `not_found`, it joins afresh through the same URL with a new token.
  // `joined` puts the page back in the call (it publishes again and answers the new
  // `subscribe_offer`). The recovery stays open until media connects (or
  // RECOVERY_SETTLE_MS pass), so a fault soon after continues its backoff and its bound;
  // past RECOVERY_LIMIT_MS the page gives up: state `closed`, the error shown.

  function recover(why, url) {
    if (s.state !== 'joined' && s.state !== 'reconnecting') return;
    let r = s.recovery;
    if (!r) {
      r = { since: Date.now(), cause: why, why, round: 0, attempts: 0, queue: [], target: null,
        timer: null, answerTimer: null, joinedAt: null, resumed: false };
      s.recovery = r;
    }
    log('recovering:', why, url || '');
    r.why = why;
    r.target = url ? wsUrl(url) : (s.url || wsUrl());
    r.joinedAt = null;
    clearTimeout(r.timer);
    clearTimeout(r.answerTimer);
    clearInterval(s.pingTimer);
    dropSocket();
    closePeerConnections();
    setState('reconnecting');
    nextRound();
  }

  function nextRound() {
    const r = s.recovery;
    const elapsed = Date.now() - r.since;
    if (elapsed >= RECOVERY_LIMIT_MS) {
      giveUp();
      return;
    }
    const base = RETRY_DELAYS_MS[Math.min(r.round, RETRY_DELAYS_MS.length - 1)];
    const delay = Math.min(base * (1 + RETRY_JITTER * Math.random()), RECOVERY_LIMIT_MS - elapsed);
    r.round += 1;
    clearTimeout(r.timer);
    r.timer = setTimeout(() => {
      const urls = [r.target, ...s.fallbackUrls.map((u) => wsUrl(u))];
      r.queue = urls.filter((u, i) => urls.indexOf(u) === i);
      nextAttempt();
    }, delay);
  }

  function nextAttempt() {
    const r = s.recovery;
    if (!r || s.state !== 'reconnecting') return;
    const url = r.queue.shift();
    if (!url) {
      nextRound();
      return;
    }
    r.attempts += 1;
    const session = s.session;
    const first = s.resumeToken
      ? Promise.resolve({ type: 'resume', resume_token: s.resumeToken })
      : tokenFor(url).then((token) => ({ type: 'join', room: s.room, token }));
    first.then((msg) => {
      if (s.recovery !== r || session !== s.session || s.state !== 'reconnecting') return;
      log(`attempt ${r.attempts} (round ${r.round}):`, msg.type, 'through', url);
      connect(url, msg);
    }, (e) => {
      if (s.recovery !== r || session !== s.session) return;
      attemptFailed(e.message, true);
    });
  }

  // An attempt failed. Where its URL could not be reached the next one is tried at once;
  // otherwise (the node answered but could not take us back) the next round begins.
  function attemptFailed(why, unreachable) {
    const r = s.recovery;
    if (!r) return;
    clearTimeout(r.answerTimer);
    r.why = why;
    log('attempt failed:', why);
    if (unreachable) nextAttempt();
    else nextRound();
  }

  function awaitAnswer(ws) {
    const r = s.recovery;
    clearTimeout(r.answerTimer);
    r.answerTimer = setTimeout(() => {
      if (ws !== s.ws || s.recovery !== r || s.state !== 'reconnecting') return;
      dropSocket();
      attemptFailed(`no answer to ${s.firstMessage}`, false);
    }, ANSWER_TIMEOUT_MS);
  }

  // An `error` in answer to our `resume` or `join` while reconnecting.
  function refused(msg) {
    const r = s.recovery;
    const code = msg.code || 'error';
    clearTimeout(r.answerTimer);
    dropSocket();
    if (s.firstMessage === 'resume' && (code === 'unauthorized' || code === 'not_found')) {
      // The participant cannot be restored (its grace period or its token ran out): join
      // afresh, through the same URL, with a new token.
      log('resume refused:', code, '- joining afresh');
      s.resumeToken = null;
      r.queue.unshift(s.wsUrl);
      nextAttempt();
    } else if (s.firstMessage === 'join' && (code === 'forbidden' || code === 'bad_request')) {
      giveUp(`${code}: ${msg.message || 'join refused'}`);
    } else {
      attemptFailed(`${s.firstMessage} refused: ${code} ${msg.message || ''}`.trim(), false);
    }
  }

  function rejoined() {
    const r = s.recovery;
    clearTimeout(r.timer);
    clearTimeout(r.answerTimer);
    r.joinedAt = Date.now();
    r.resumed = s.firstMessage === 'resume';
    log(r.resumed ? 'resumed' : 'joined afresh', `after ${r.joinedAt - r.since} ms (${r.attempts} attempts) through`, s.url);
    r.timer = setTimeout(() => {
      if (s.recovery === r && s.state === 'joined') finishRecovery();
    }, RECOVERY_SETTLE_MS);
  }

  // A peer connection connected: a recovery that got us joined again is over.
  function mediaConnected() {
    const r = s.recovery;
    if (r && r.joinedAt && s.state === 'joined') finishRecovery();
  }

  function finishRecovery() {
    const r = s.recovery;
    s.recovery = null;
    clearTimeout(r.timer);
    clearTimeout(r.answerTimer);
    s.recoveries.push({
      why: r.cause,
      joined_ms: r.joinedAt - r.since,
      settled_ms: Date.now() - r.since,
      attempts: r.attempts,
      rounds: r.round,
      via: s.url,
      resumed: r.resumed,
    });
  }

  function giveUp(why) {
    const r = s.recovery;
    const secs = r ? Math.round((Date.now() - r.since) / 1000) : 0;
    showError(`disconnected (${why || (r && r.why) || 'connection lost'}); gave up after ${secs} s`, 'network');
    teardown('closed');
  }

  function handle(msg, session, link) {
    if (msg.type !== 'pong') {
      const brief = Object.assign({}, msg);
      if (brief.sdp) brief.sdp = `(${brief.sdp.length} bytes)`;
      console.debug('[demo] <-', msg.type, JSON.stringify(brief));
    }
    switch (msg.type) {
      case 'joined': {
        s.joinedCount += 1;
        if (s.pub || s.sub) closePeerConnections();
        s.participantId = msg.participant && msg.participant.id;
        if (msg.participant && msg.participant.name) s.name = msg.participant.name;
        s.nodeId = msg.node || null;
        s.room = msg.room || s.room;
        if (msg.resume_token) s.resumeToken = msg.resume_token;
        s.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
        s.url = s.wsUrl;
        if (Array.isArray(msg.fallback_urls)) {
          s.fallbackUrls = msg.fallback_urls.filter((u) => typeof u === 'string' && u);
        }
        const present = new Set();
        s.departed.clear();
        for (const p of msg.participants || []) {
          if (p.id === s.participantId) continue;
          present.add(p.id);
          const rec = ensureParticipant(p.id, p.name);
          rec.tracks = new Map((p.tracks || []).map((t) => [t.id, t.kind]));
        }
        for (const id of Array.from(s.participants.keys())) {
          if (!present.has(id)) {
            s.departed.add(id);
            removeParticipant(id);
          }
        }
        ui.roomLabel.textContent = s.room;
        if (s.localTile) setTileName(s.localTile, `${s.name} (you)`);
        setState('joined');
        startPing();
        if (s.recovery) rejoined();
        log('joined', s.room, 'as', s.participantId, 'on', s.nodeId, 'through', s.url);
        startPublishing(session, link);
        break;
      }
      case 'publish_answer':
        onPublishAnswer(msg.sdp);
        break;
      case 'subscribe_offer':
        s.subQueue = s.subQueue
          .then(() => onSubscribeOffer(msg.sdp, session, link))
          .catch((e) => showError(`subscribe failed: ${e.message}`));
        break;
      case 'candidate':
        if (msg.pc === 'publisher' || msg.pc === 'subscriber') {
          // Keep subscriber candidates in order with the offers they belong to.
          if (msg.pc === 'subscriber') {
            s.subQueue = s.subQueue.then(() => addRemoteCandidate('subscriber', msg.candidate));
          } else {
            addRemoteCandidate('publisher', msg.candidate);
          }
        }
        break;
      case 'participant_joined':
        if (msg.participant && msg.participant.id !== s.participantId) {
          ensureParticipant(msg.participant.id, msg.participant.name);
        }
        break;
      case 'participant_left':
        s.departed.add(msg.id);
        removeParticipant(msg.id);
        break;
      case 'track_published': {
        if (msg.participant === s.participantId || !msg.track || s.departed.has(msg.participant)) break;
        const p = ensureParticipant(msg.participant);
        p.tracks.set(msg.track.id, msg.track.kind);
        break;
      }
      case 'track_unpublished': {
        const p = s.participants.get(msg.participant);
        if (!p) break;
        p.tracks.delete(msg.track_id);
        for (const [track, info] of Array.from(p.media)) {
          if (info.serverTrackId === msg.track_id || track.id === msg.track_id) detachTrack(p, track);
        }
        break;
      }
      case 'message':
        s.messages.push({ from: msg.from, data: msg.data, at: Date.now() });
        log('message from', msg.from, msg.data);
        break;
      case 'removed':
        // Out for good (the application removed us or closed the room): the node closes
        // the socket (1000) and we must not come back.
        log('removed from the room:', msg.reason);
        s.removed = msg.reason || 'removed';
        showError(`removed from the room (${s.removed})`, 'removed');
        teardown('closed');
        break;
      case 'data':
        s.messages.push({ from: null, topic: msg.topic || null, data: msg.data, at: Date.now() });
        log('data', msg.topic ? `(${msg.topic})` : '', msg.data);
        break;
      case 'track_muted': {
        log(msg.muted ? 'muted:' : 'unmuted:', msg.participant, msg.track_id);
        break;
      }
      case 'permissions_changed':
        if (msg.resume_token) s.resumeToken = msg.resume_token;
        log('permissions changed: publish', msg.can_publish, 'subscribe', msg.can_subscribe);
        break;
      case 'reconnect':
        // The node closes the socket next (code 1012); `recover` has let go of it already.
        log('node asks to reconnect:', msg.reason, msg.url || '');
        recover(`reconnect: ${msg.reason || 'requested by node'}`, msg.url || null);
        break;
      case 'error':
        if (s.state === 'connecting') {
          showError(msg.message || 'error', msg.code || 'error');
          teardown('idle');
        } else if (s.state === 'reconnecting') {
          refused(msg);
        } else {
          // `unauthorized` while in the call: this user joined again elsewhere, and the node
          // closes this socket next.
          if (msg.code === 'unauthorized') s.replaced = true;
          showError(msg.message || 'error', msg.code || 'error');
        }
        break;
      case 'pong':
        s.lastPong = Date.now();
        break;
      default:
        log('ignoring unknown message', msg.type);
    }
  }

  // ---------------------------------------------------------------- join / leave

  // A join token from the dev token endpoint of `origin` (default: this page's node).
  async function fetchToken(room, user, name, origin) {
    const q = new URLSearchParams({ room, user, name });
    let res;
    try {
      res = await fetch(`${origin || ''}/dev/token?${q}`, {
        cache: 'no-store',
        signal: AbortSignal.timeout(TOKEN_TIMEOUT_MS),
      });
    } catch (e) {
      throw new Error(`token request failed: ${e.message}`);
    }
    if (!res.ok) {
      const body = (await res.text().catch(() => '')).trim();
      if (res.status === 404) {
        throw new Error('no dev token endpoint: start the node with --dev-tokens, or open this page with ?token=<JWT>');
      }
      throw new Error(`token request failed: HTTP ${res.status}${body ? ' ' + body : ''}`);
    }
    const body = await res.json();
    if (!body || typeof body.token !== 'string') throw new Error('token response has no "token"');
    return body.token;
  }

  // A new join token for joining afresh through the node at `url` (a WebSocket URL): from
  // that node, which is alive, else from this page's node, else the token we joined with
  // (valid for its hour on any node of the cluster).
  async function tokenFor(url) {
    if (params.get('token')) return params.get('token');
    const origins = [];
    try {
      const u = new URL(url);
      u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
      origins.push(u.origin);
    } catch (_) { /* the page's own origin below */ }
    if (!origins.includes(location.origin)) origins.push(location.origin);
    for (const origin of origins) {
      try {
        return await fetchToken(s.room, s.userId, s.name, origin === location.origin ? '' : origin);
      } catch (e) {
        log('no token from', origin, e.message);
      }
    }
    if (s.token) return s.token;
    throw new Error('no join token');
  }

  async function join(room, name) {
    if (s.state !== 'idle' && s.state !== 'closed') return;
    room = String(room || '').trim();
    name = String(name || '').trim() || randomName();
    if (!/^[A-Za-z0-9._~@:-]{1,128}$/.test(room)) {
      showError('room names use letters, digits and . _ ~ @ : - (at most 128)', 'bad_request');
      return;
    }
    s.session += 1;
    const session = s.session;
    s.room = room;
    s.name = name;
    s.userId = `u-${randomHex(6)}`;
    s.participantId = null;
    s.resumeToken = null;
    s.url = null;
    s.fallbackUrls = [];
    s.publishState = 'none';
    s.joinedCount = 0;
    ui.roomLabel.textContent = room;
    setState('connecting');
    ui.join.disabled = true;

    // Ask for the camera while the token and the socket are on their way.
    s.mediaPromise = getLocalMedia();
    s.mediaPromise.catch(() => {}); // reported in startPublishing

    try {
      s.token = params.get('token') || (await fetchToken(room, s.userId, name));
    } catch (e) {
      if (session !== s.session) return;
      showError(e.message, 'token');
      teardown('idle');
      return;
    }
    if (session !== s.session) return;
    const url = new URL(location.href);
    url.searchParams.set('room', room);
    history.replaceState(null, '', url);
    connect(wsUrl(), { type: 'join', room, token: s.token });
  }

  function teardown(next) {
    s.session += 1;
    clearInterval(s.pingTimer);
    if (s.recovery) {
      clearTimeout(s.recovery.timer);
      clearTimeout(s.recovery.answerTimer);
      s.recovery = null;
    }
    const ws = s.ws;
    s.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    closePeerConnections();
    for (const id of Array.from(s.participants.keys())) removeParticipant(id);
    s.departed.clear();
    const media = s.mediaPromise;
    s.mediaPromise = null;
    if (media) media.then((st) => st.getTracks().forEach((t) => t.stop())).catch(() => {});
    if (s.localStream) s.localStream.getTracks().forEach((t) => t.stop());
    s.localStream = null;
    if (s.localTile) {
      s.localTile.video.srcObject = null;
      s.localTile.tile.remove();
      s.localTile = null;
    }
    s.participantId = null;
    s.nodeId = null;
    s.resumeToken = null;
    s.publishState = 'none';
    setState(next);
    layout();
  }

  function leave() {
    if (s.state === 'idle') return;
    send({ type: 'leave' }); // queued ahead of the close frame
    teardown('idle');
  }

  // ---------------------------------------------------------------- wiring

  ui.room.value = params.get('room') || 'demo';
  ui.name.value = params.get('name') || randomName();
  ui.form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    join(ui.room.value, ui.name.value);
  });
  ui.leave.addEventListener('click', leave);
  ui.mic.addEventListener('click', () => toggle('audio'));
  ui.cam.addEventListener('click', () => toggle('video'));
  window.addEventListener('pagehide', () => { if (s.state !== 'idle') leave(); });
  setState('idle');
  layout();

  async function stats() {
    const out = {};
    for (const p of s.participants.values()) {
      out[p.id] = {
        name: p.name,
        tracks: Array.from(p.media.values(), (m) => m.kind),
        video: { framesDecoded: 0, framesReceived: 0, packetsReceived: 0, bytesReceived: 0, frameWidth: 0, frameHeight: 0, senderReports: 0 },
        audio: { packetsReceived: 0, totalSamplesReceived: 0, bytesReceived: 0, senderReports: 0 },
      };
    }
    const pc = s.sub;
    if (!pc) return out;
    const byMid = new Map();
    const byTrackId = new Map();
    for (const p of s.participants.values()) {
      for (const [track, info] of p.media) {
        if (info.mid !== null && info.mid !== undefined) byMid.set(String(info.mid), p.id);
        byTrackId.set(track.id, p.id);
      }
    }
    const report = await pc.getStats();
    report.forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      const pid = (r.mid !== undefined && byMid.get(String(r.mid))) || byTrackId.get(r.trackIdentifier);
      if (!pid || !out[pid]) return;
      const kind = r.kind || r.mediaType;
      // The RTCP sender reports the node sent for this stream (its remote-outbound-rtp).
      const remote = r.remoteId ? report.get(r.remoteId) : null;
      const senderReports = (remote && remote.reportsSent) || 0;
      if (kind === 'video') {
        const v = out[pid].video;
        v.framesDecoded += r.framesDecoded || 0;
        v.framesReceived += r.framesReceived || 0;
        v.packetsReceived += r.packetsReceived || 0;
        v.bytesReceived += r.bytesReceived || 0;
        v.frameWidth = Math.max(v.frameWidth, r.frameWidth || 0);
        v.frameHeight = Math.max(v.frameHeight, r.frameHeight || 0);
        v.senderReports += senderReports;
      } else if (kind === 'audio') {
        const a = out[pid].audio;
        a.packetsReceived += r.packetsReceived || 0;
        a.totalSamplesReceived += r.totalSamplesReceived || 0;
        a.bytesReceived += r.bytesReceived || 0;
        a.senderReports += senderReports;
      }
    });
    return out;
  }

  window.demo = {
    get state() { return s.state; },
    get participantId() { return s.participantId; },
    get room() { return s.room; },
    get name() { return s.name; },
    get nodeId() { return s.nodeId; },
    get publishState() { return s.publishState; },
    get trickle() { return TRICKLE_ALL; },
    get publisherPc() { return s.pub; },
    get subscriberPc() { return s.sub; },
    get lastPong() { return s.lastPong; },
    get joinedCount() { return s.joinedCount; },
    // The socket's URL, and where the page would go if its node went away.
    get url() { return s.url; },
    get fallbackUrls() { return s.fallbackUrls.slice(); },
    // The recovery under way ({ why, since, attempts, rounds }), or null.
    get recovering() {
      const r = s.recovery;
      return r && { why: r.why, since: r.since, attempts: r.attempts, rounds: r.round, joined: Boolean(r.joinedAt) };
    },
    // Finished recoveries: { why, joined_ms, settled_ms, attempts, rounds, via, resumed }.
    recoveries: s.recoveries,
    errors: s.errors,
    messages: s.messages,
    remoteParticipants() {
      return Array.from(s.participants.values(), (p) => ({
        id: p.id,
        name: p.name,
        tracks: Array.from(p.tracks, ([id, kind]) => ({ id, kind })),
        media: Array.from(p.media.values(), (m) => ({ kind: m.kind, trackId: m.serverTrackId, mid: m.mid })),
      }));
    },
    stats,
    join,
    leave,
    send,
    // Tests: drop the signaling socket as a network failure would (the page then resumes).
    dropConnection() {
      if (s.ws) s.ws.close(4000, 'dropped by test');
    },
    // Tests: make the next `resume` fail (the node answers `unauthorized`), so that the page
    // joins afresh.
    spoilResumeToken() {
      if (s.resumeToken) s.resumeToken = `${s.resumeToken.slice(0, -4)}xxxx`;
    },
  };

  if (params.get('autojoin') === '1') join(ui.room.value, ui.name.value);
})();
