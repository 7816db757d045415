// SFU demo client: plain JS, no build step. Speaks the client signaling protocol v1
// (PROTOCOL.md): one WebSocket to /ws, a publisher RTCPeerConnection that we offer
// (sendonly) and a subscriber RTCPeerConnection that the node offers (recvonly).
//
// URL parameters: ?room=<room> (default "demo"), ?name=<display name>, ?token=<JWT> (skips
// the dev token endpoint), ?trickle=1 (send descriptions at once and trickle every ICE
// candidate; the default waits for ICE gathering, up to a short bound, and trickles only
// what is gathered after that), ?autojoin=1.
//
// Tests read the state through `window.demo` (see the bottom of this file).
(() => {
  'use strict';

  const PING_INTERVAL_MS = 10000;
  const GATHER_WAIT_MS = 2000;
  const MAX_RECONNECTS = 5;
  const MAX_ERRORS_SHOWN = 4;

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
    joinedCount: 0, // `joined` messages this session: the first join and every resume
    reconnectAttempts: 0,
    reconnectTimer: null,
    firstMessage: null, // 'join' | 'resume' for the socket being opened
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
    pc.addEventListener('connectionstatechange', () => {
      updateDetail();
      if (pc.connectionState === 'failed') showError(`${which} connection failed`, 'ice');
    });
    return pc;
  }

  async function startPublishing(session) {
    let stream = null;
    try {
      stream = await s.mediaPromise;
    } catch (e) {
      if (session !== s.session) return;
      s.publishState = 'unavailable';
      showError(`no camera or microphone: ${e.message}; joining as a viewer`, 'media');
      updateDetail();
      return;
    }
    if (session !== s.session || !stream) return;
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
      if (session !== s.session || pc !== s.pub) return;
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

  async function onSubscribeOffer(sdp, session) {
    if (session !== s.session) return;
    const pc = subscriberPc();
    await pc.setRemoteDescription({ type: 'offer', sdp });
    await flushCandidates('subscriber');
    await pc.setLocalDescription(await pc.createAnswer());
    const answer = await localSdp(pc);
    if (session !== s.session || pc !== s.sub) return;
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

  function connect(url, first) {
    const session = s.session;
    const ws = new WebSocket(url);
    s.ws = ws;
    s.firstMessage = first.type;
    ws.addEventListener('open', () => {
      if (ws !== s.ws) return;
      ws.send(JSON.stringify(first));
    });
    ws.addEventListener('message', (ev) => {
      if (ws !== s.ws || session !== s.session) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        showError('node sent invalid JSON');
        return;
      }
      try {
        handle(msg, session);
      } catch (e) {
        showError(`handling ${msg.type}: ${e.message}`);
      }
    });
    ws.addEventListener('close', (ev) => {
      if (ws !== s.ws || session !== s.session) return;
      s.ws = null;
      if (s.state === 'joined' || s.state === 'reconnecting') {
        scheduleReconnect(null, `connection lost (${ev.code})`);
      } else if (s.state === 'connecting') {
        showError(`could not join: connection closed (${ev.code}${ev.reason ? ' ' + ev.reason : ''})`, 'network');
        teardown('idle');
      }
    });
  }

  function scheduleReconnect(url, why) {
    if (!s.resumeToken || s.reconnectAttempts >= MAX_RECONNECTS) {
      showError(`disconnected: ${why}`, 'network');
      teardown('closed');
      return;
    }
    const attempt = s.reconnectAttempts++;
    const delay = url ? 0 : Math.min(500 * 2 ** attempt, 5000);
    log('reconnecting in', delay, 'ms:', why);
    setState('reconnecting');
    closePeerConnections();
    clearTimeout(s.reconnectTimer);
    s.reconnectTimer = setTimeout(() => {
      connect(wsUrl(url), { type: 'resume', resume_token: s.resumeToken });
    }, delay);
  }

  function startPing() {
    clearInterval(s.pingTimer);
    s.pingTimer = setInterval(() => send({ type: 'ping' }), PING_INTERVAL_MS);
  }

  function handle(msg, session) {
    if (msg.type !== 'pong') {
      const brief = Object.assign({}, msg);
      if (brief.sdp) brief.sdp = `(${brief.sdp.length} bytes)`;
      console.debug('[demo] <-', msg.type, JSON.stringify(brief));
    }
    switch (msg.type) {
      case 'joined': {
        const resumed = s.state === 'reconnecting';
        s.joinedCount += 1;
        if (s.pub || s.sub) closePeerConnections();
        s.participantId = msg.participant && msg.participant.id;
        if (msg.participant && msg.participant.name) s.name = msg.participant.name;
        s.nodeId = msg.node || null;
        s.room = msg.room || s.room;
        if (msg.resume_token) s.resumeToken = msg.resume_token;
        s.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
        s.reconnectAttempts = 0;
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
        log(resumed ? 'resumed' : 'joined', s.room, 'as', s.participantId, 'on', s.nodeId);
        startPublishing(session);
        break;
      }
      case 'publish_answer':
        onPublishAnswer(msg.sdp);
        break;
      case 'subscribe_offer':
        s.subQueue = s.subQueue
          .then(() => onSubscribeOffer(msg.sdp, session))
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
      case 'reconnect': {
        log('node asks to reconnect:', msg.reason, msg.url || '');
        const old = s.ws;
        s.ws = null;
        if (old) old.close(1000, 'reconnect');
        s.reconnectAttempts = 0;
        scheduleReconnect(msg.url || null, msg.reason || 'requested by node');
        break;
      }
      case 'error':
        showError(msg.message || 'error', msg.code || 'error');
        if (s.state === 'connecting') {
          teardown('idle');
        } else if (s.state === 'reconnecting' && s.firstMessage === 'resume' && s.token) {
          // The resume was refused (grace period over, say): join afresh with our token.
          log('resume refused, joining again');
          s.resumeToken = null;
          const old = s.ws;
          s.ws = null;
          if (old) old.close(1000);
          setState('connecting');
          connect(wsUrl(), { type: 'join', room: s.room, token: s.token });
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

  async function fetchToken(room, user, name) {
    const q = new URLSearchParams({ room, user, name });
    let res;
    try {
      res = await fetch(`/dev/token?${q}`, { cache: 'no-store' });
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
    s.reconnectAttempts = 0;
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
    clearTimeout(s.reconnectTimer);
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
        video: { framesDecoded: 0, framesReceived: 0, packetsReceived: 0, bytesReceived: 0, frameWidth: 0, frameHeight: 0 },
        audio: { packetsReceived: 0, totalSamplesReceived: 0, bytesReceived: 0 },
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
      if (kind === 'video') {
        const v = out[pid].video;
        v.framesDecoded += r.framesDecoded || 0;
        v.framesReceived += r.framesReceived || 0;
        v.packetsReceived += r.packetsReceived || 0;
        v.bytesReceived += r.bytesReceived || 0;
        v.frameWidth = Math.max(v.frameWidth, r.frameWidth || 0);
        v.frameHeight = Math.max(v.frameHeight, r.frameHeight || 0);
      } else if (kind === 'audio') {
        const a = out[pid].audio;
        a.packetsReceived += r.packetsReceived || 0;
        a.totalSamplesReceived += r.totalSamplesReceived || 0;
        a.bytesReceived += r.bytesReceived || 0;
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
  };

  if (params.get('autojoin') === '1') join(ui.room.value, ui.name.value);
})();
