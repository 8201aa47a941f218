// linker test page: the client logic behind index.html.
// One WebSocket at a time. Every frame sent or received is written to #log as
// <div class="frame out|in" data-type="TYPE">; incoming MESSAGE frames also go
// to #conversation as "<from>: <content>", channel posts as
// "[<channel> #<seq>] <from>: <content>" (li.post), and confirmations,
// acceptances and channel events as li.note. Connection events (open/close/
// error) go to the log as <div class="event">, which is not a frame.
// With "acknowledge" checked, AUTH_CLIENT carries "ack": true and every
// numbered frame (top-level seq) is acknowledged with a batched ACK {upTo}.
// Query parameters: ?ws=<url> sets the WebSocket URL, ?user=<id> the userId.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);

  let socket = null;

  // Acknowledgements of the current connection (docs/protocol.md, section 10).
  // upTo covers only frames sent to this socket, so all of it starts afresh
  // with each connection; #acked keeps showing the last ACK sent.
  const ACK_DELAY_MS = 50; // at most one ACK per this many ms
  let ackOn = false; // this connection logged in with "ack": true
  let highestSeq = 0; // highest seq received on this connection
  let ackedSeq = 0; // highest seq acknowledged on this connection
  let ackTimer = null; // the pending batched ACK, if any

  // Channels this socket is a member of (memberships end with the socket).
  const subscribed = new Set();

  // ---- defaults --------------------------------------------------------

  function defaultWsUrl() {
    let host = window.location.hostname || '127.0.0.1';
    if (host.includes(':')) host = '[' + host + ']'; // IPv6 literal
    return 'ws://' + host + ':8088/ws';
  }

  function randomUserId() {
    const n = Math.floor(Math.random() * 1000000);
    return 'ANZ-' + String(n).padStart(6, '0');
  }

  $('ws-url').value = params.get('ws') || defaultWsUrl();
  $('user-id').value = params.get('user') || randomUserId();
  $('raw').value = '{"type":"MESSAGE","data":{"to":"ANZ-123223","content":"hello"}}';
  updateTitle();

  // ---- state display ---------------------------------------------------

  function setState(state) {
    // state: "connecting" | "connected" | "disconnected"
    const el = $('state');
    el.textContent = state;
    el.dataset.state = state;
    const open = state === 'connected';
    $('connect').disabled = state !== 'disconnected';
    $('disconnect').disabled = state === 'disconnected';
    $('ws-url').disabled = state !== 'disconnected';
    document.querySelectorAll('.needs-connection').forEach((b) => { b.disabled = !open; });
  }

  function setAuthState(state, text) {
    // state: "none" | "ok" | "rejected"
    const el = $('auth-state');
    el.textContent = text;
    el.dataset.state = state;
  }

  function setResumeState(state, text) {
    // state: "off" | "held" | "complete" | "refused"
    const el = $('resume-state');
    el.textContent = text;
    el.dataset.state = state;
  }

  function showSubscribed() {
    $('channel-subs').textContent = subscribed.size ? [...subscribed].sort().join(', ') : 'none';
  }

  function updateTitle() {
    document.title = 'linker test page: ' + $('user-id').value;
  }
  $('user-id').addEventListener('input', updateTitle);

  // ---- log -------------------------------------------------------------

  function timeNow() {
    const d = new Date();
    const p = (n, w) => String(n).padStart(w || 2, '0');
    return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds()) + '.' + p(d.getMilliseconds(), 3);
  }

  // The log stays scrolled to the bottom (newest frame) unless the user has
  // scrolled up to read older frames; also when the log itself is resized.
  const logEl = $('log');
  let logPinned = true;
  logEl.addEventListener('scroll', () => {
    logPinned = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 40;
  });
  new ResizeObserver(() => {
    if (logPinned) logEl.scrollTop = logEl.scrollHeight;
  }).observe(logEl);

  function appendToLog(el) {
    logEl.appendChild(el);
    if (logPinned) logEl.scrollTop = logEl.scrollHeight;
  }

  // direction: "in" | "out"; text: the frame exactly as sent or received.
  function logFrame(direction, text) {
    let type = '(not JSON)';
    let body = text;
    try {
      const parsed = JSON.parse(text);
      if (parsed && typeof parsed === 'object' && typeof parsed.type === 'string') {
        type = parsed.type;
      } else {
        type = '(no type)';
      }
      body = JSON.stringify(parsed, null, 2);
    } catch (_) { /* keep the raw text */ }

    const entry = document.createElement('div');
    entry.className = 'frame ' + direction;
    entry.dataset.type = type;

    const head = document.createElement('div');
    head.className = 'frame-head';
    const arrow = document.createElement('span');
    arrow.className = 'dir';
    arrow.textContent = direction === 'out' ? '\u2192 sent' : '\u2190 received';
    const typeEl = document.createElement('span');
    typeEl.className = 'type';
    typeEl.textContent = type;
    const time = document.createElement('span');
    time.className = 'time';
    time.textContent = timeNow();
    head.append(arrow, typeEl, time);

    const pre = document.createElement('pre');
    pre.textContent = body;

    entry.append(head, pre);
    appendToLog(entry);
  }

  function logEvent(text, isError) {
    const entry = document.createElement('div');
    entry.className = 'event' + (isError ? ' error' : '');
    entry.textContent = timeNow() + '  ' + text;
    appendToLog(entry);
  }

  // className: "" for a message, "post" for a channel post, "note" for the rest.
  function addToConversation(text, className, title) {
    const li = document.createElement('li');
    if (className) li.className = className;
    li.textContent = text;
    li.title = 'received ' + timeNow() + (title ? ', ' + title : '');
    const list = $('conversation');
    list.appendChild(li);
    list.scrollTop = list.scrollHeight;
    return li;
  }

  function contentText(content) {
    return typeof content === 'string' ? content : JSON.stringify(content);
  }

  $('clear-log').addEventListener('click', () => { logEl.replaceChildren(); logPinned = true; });
  $('clear-conversation').addEventListener('click', () => { $('conversation').replaceChildren(); });

  // ---- connection ------------------------------------------------------

  function connect() {
    if (socket) return;
    const url = $('ws-url').value.trim();
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      logEvent('cannot connect to ' + url + ': ' + e.message, true);
      return;
    }
    socket = ws;
    setState('connecting');
    setAuthState('none', 'not authenticated'); // a new connection starts unauthenticated
    resetConnectionState();
    logEvent('connecting to ' + url);

    ws.addEventListener('open', () => {
      if (socket !== ws) return;
      setState('connected');
      logEvent('connected');
    });
    ws.addEventListener('message', (ev) => {
      if (socket !== ws) return;
      onFrame(typeof ev.data === 'string' ? ev.data : '(binary frame)');
    });
    ws.addEventListener('error', () => {
      if (socket !== ws) return;
      logEvent('WebSocket error (see the close event)', true);
    });
    ws.addEventListener('close', (ev) => {
      if (socket !== ws) return;
      socket = null;
      setState('disconnected');
      resetConnectionState();
      // An accepted authentication belongs to the connection that is gone;
      // a rejection stays on screen so its reason can still be read.
      if ($('auth-state').dataset.state === 'ok') setAuthState('none', 'not authenticated');
      logEvent('disconnected (code ' + ev.code + (ev.reason ? ', reason "' + ev.reason + '"' : '') + ')', !ev.wasClean);
    });
  }

  // What belongs to one connection: acknowledgements, resume, memberships.
  function resetConnectionState() {
    clearTimeout(ackTimer);
    ackTimer = null;
    ackOn = false;
    highestSeq = 0;
    ackedSeq = 0;
    setResumeState('off', 'off');
    subscribed.clear();
    showSubscribed();
  }

  function disconnect() {
    if (socket) socket.close(1000, 'closed from the test page');
  }

  $('connect').addEventListener('click', connect);
  $('disconnect').addEventListener('click', disconnect);
  $('ws-url').addEventListener('keydown', (e) => { if (e.key === 'Enter') connect(); });

  // ---- incoming frames -------------------------------------------------

  function onFrame(text) {
    logFrame('in', text);
    let frame;
    try { frame = JSON.parse(text); } catch (_) { return; }
    if (!frame || typeof frame !== 'object') return;
    const data = frame.data || {};
    if (ackOn && Number.isInteger(frame.seq)) noteSeq(frame.seq);
    const numbered = Number.isInteger(frame.seq) ? 'seq ' + frame.seq + ', id ' + frame.id : '';

    switch (frame.type) {
      case 'AUTH_CLIENT_REPLY':
        if (data.isAuthenticated === true) {
          setAuthState('ok', 'authenticated');
          if (!ackOn) break;
          if (data.ack === true) {
            setResumeState('held', 'held until RESUME_COMPLETE');
          } else {
            ackOn = false; // the server speaks the original protocol only
            setResumeState('refused', 'server does not acknowledge');
          }
        } else {
          setAuthState('rejected', 'rejected: ' + (data.reason || 'no reason given'));
        }
        break;
      case 'RESUME_COMPLETE':
        setResumeState('complete', 'complete, ' + data.resent + ' resent');
        addToConversation('resume complete: ' + data.resent + ' resent', 'note');
        break;
      case 'MESSAGE': {
        const li = addToConversation(data.from + ': ' + contentText(data.content), '',
          [frame.reference ? 'reference ' + frame.reference : '', numbered].filter(Boolean).join(', '));
        if (numbered) li.dataset.seq = String(frame.seq);
        break;
      }
      case 'MESSAGE_CONFIRMATION':
        addToConversation('\u2713 confirmed: reference ' + data.reference, 'note', numbered);
        break;
      case 'MESSAGE_ACCEPTED':
        addToConversation('\u2713 accepted: reference ' + data.reference, 'note');
        break;
      case 'CHANNEL_MESSAGE': {
        // A post's seq is its number in the channel, inside data; it needs no ACK.
        const seq = Number.isInteger(data.seq) ? ' #' + data.seq : '';
        const li = addToConversation('[' + data.channel + seq + '] ' + data.from + ': ' + contentText(data.content),
          'post', frame.reference ? 'reference ' + frame.reference : '');
        li.dataset.channel = data.channel;
        if (seq) li.dataset.seq = String(data.seq);
        break;
      }
      case 'SUBSCRIBED':
        subscribed.add(data.channel);
        showSubscribed();
        addToConversation('joined ' + data.channel, 'note');
        break;
      case 'UNSUBSCRIBED':
        subscribed.delete(data.channel);
        showSubscribed();
        addToConversation('left ' + data.channel, 'note');
        break;
      case 'CHANNEL_HISTORY_COMPLETE':
        addToConversation('history of ' + data.channel + ': ' + data.replayed + ' replayed, last seq ' + data.lastSeq, 'note');
        break;
      case 'CHANNEL_PRESENCE': {
        const members = Array.isArray(data.members) ? data.members : [];
        const el = $('channel-members');
        el.textContent = data.channel + ': ' + (members.length ? members.join(', ') : 'nobody');
        el.dataset.channel = data.channel;
        break;
      }
      default:
        break;
    }
  }

  // Numbered frames are acknowledged in batches: one ACK {upTo} for the
  // highest seq so far, at most every ACK_DELAY_MS. A timer rather than
  // requestAnimationFrame, which stops in a background tab.
  function noteSeq(seq) {
    if (seq > highestSeq) highestSeq = seq;
    if (ackTimer === null) ackTimer = setTimeout(sendAck, ACK_DELAY_MS);
  }

  function sendAck() {
    ackTimer = null;
    if (highestSeq <= ackedSeq) return;
    sendFrame({ type: 'ACK', data: { upTo: highestSeq } });
    ackedSeq = highestSeq;
    const el = $('acked');
    el.textContent = String(ackedSeq);
    el.dataset.seq = String(ackedSeq);
  }

  // ---- outgoing frames -------------------------------------------------

  function sendText(text) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      logEvent('not connected: nothing sent', true);
      return;
    }
    socket.send(text);
    logFrame('out', text);
  }

  function sendFrame(frame) {
    sendText(JSON.stringify(frame));
  }

  // Options shared by MESSAGE, GROUP_MESSAGE and CHANNEL_MESSAGE: feature, reference (omitted
  // when empty) and confirmationEnabled.
  function messageOptions(frame) {
    frame.feature = $('feature').value;
    const reference = $('reference').value.trim();
    if (reference) frame.reference = reference;
    frame.confirmationEnabled = $('confirmation').checked;
    return frame;
  }

  $('auth').addEventListener('click', () => {
    const data = {
      appId: $('app-id').value.trim(),
      userId: $('user-id').value.trim(),
      token: $('token').value,
    };
    // Without "acknowledge" the frame is the original protocol's, unchanged.
    ackOn = $('ack').checked;
    if (ackOn) data.ack = true;
    sendFrame({ type: 'AUTH_CLIENT', data: data });
  });

  $('send').addEventListener('click', () => {
    sendFrame(messageOptions({
      type: 'MESSAGE',
      data: { to: $('to').value.trim(), content: $('content').value },
    }));
  });

  $('send-group').addEventListener('click', () => {
    const to = $('group-to').value.split(',').map((s) => s.trim()).filter((s) => s !== '');
    sendFrame(messageOptions({
      type: 'GROUP_MESSAGE',
      data: { to: to, content: $('content').value },
    }));
  });

  $('close').addEventListener('click', () => {
    sendFrame({ type: 'CLOSE_CONNECTION', data: { userId: $('close-user').value.trim() } });
  });

  $('fetch').addEventListener('click', () => {
    const raw = $('fetch-count').value.trim();
    const n = Number(raw);
    // A non-number is sent as typed, so the server's validation can be tried.
    sendFrame({ type: 'FETCH_MISSING_MESSAGES_REQUEST', data: { count: raw !== '' && Number.isFinite(n) ? n : raw } });
  });

  function channelName() {
    return $('channel').value.trim();
  }

  $('subscribe').addEventListener('click', () => {
    const data = { channel: channelName(), echo: $('channel-echo').checked };
    const raw = $('channel-history').value.trim();
    const n = Number(raw);
    // As for fetch: a non-number is sent as typed; empty asks for no history.
    if (raw !== '') data.history = Number.isFinite(n) ? n : raw;
    sendFrame({ type: 'SUBSCRIBE', data: data });
  });

  $('unsubscribe').addEventListener('click', () => {
    sendFrame({ type: 'UNSUBSCRIBE', data: { channel: channelName() } });
  });

  $('members').addEventListener('click', () => {
    sendFrame({ type: 'CHANNEL_PRESENCE', data: { channel: channelName() } });
  });

  $('channel-post').addEventListener('click', () => {
    sendFrame(messageOptions({
      type: 'CHANNEL_MESSAGE',
      data: { channel: channelName(), content: $('channel-content').value },
    }));
  });

  $('send-raw').addEventListener('click', () => {
    sendText($('raw').value);
  });

  setState('disconnected');
})();
