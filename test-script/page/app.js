// linker test page: the client logic behind index.html.
// One WebSocket at a time. Every frame sent or received is written to #log as
// <div class="frame out|in" data-type="TYPE">; incoming MESSAGE frames also go
// to #conversation as "<from>: <content>". Connection events (open/close/
// error) go to the log as <div class="event">, which is not a frame.
// Query parameters: ?ws=<url> sets the WebSocket URL, ?user=<id> the userId.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);

  let socket = null;

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
      // An accepted authentication belongs to the connection that is gone;
      // a rejection stays on screen so its reason can still be read.
      if ($('auth-state').dataset.state === 'ok') setAuthState('none', 'not authenticated');
      logEvent('disconnected (code ' + ev.code + (ev.reason ? ', reason "' + ev.reason + '"' : '') + ')', !ev.wasClean);
    });
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

    switch (frame.type) {
      case 'AUTH_CLIENT_REPLY':
        if (data.isAuthenticated === true) {
          setAuthState('ok', 'authenticated');
        } else {
          setAuthState('rejected', 'rejected: ' + (data.reason || 'no reason given'));
        }
        break;
      case 'MESSAGE': {
        const li = document.createElement('li');
        const content = typeof data.content === 'string' ? data.content : JSON.stringify(data.content);
        li.textContent = data.from + ': ' + content;
        li.title = 'received ' + timeNow() + (frame.reference ? ', reference ' + frame.reference : '');
        const list = $('conversation');
        list.appendChild(li);
        list.scrollTop = list.scrollHeight;
        break;
      }
      default:
        break;
    }
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

  // Options shared by MESSAGE and GROUP_MESSAGE: feature, reference (omitted
  // when empty) and confirmationEnabled.
  function messageOptions(frame) {
    frame.feature = $('feature').value;
    const reference = $('reference').value.trim();
    if (reference) frame.reference = reference;
    frame.confirmationEnabled = $('confirmation').checked;
    return frame;
  }

  $('auth').addEventListener('click', () => {
    sendFrame({
      type: 'AUTH_CLIENT',
      data: {
        appId: $('app-id').value.trim(),
        userId: $('user-id').value.trim(),
        token: $('token').value,
      },
    });
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

  $('send-raw').addEventListener('click', () => {
    sendText($('raw').value);
  });

  setState('disconnected');
})();
