// two-pages.mjs: browser test of the linker test page with two users.
//
// Opens the page served by the server twice in Debian's chromium (driven by
// playwright-core; no browser is ever downloaded), connects and authenticates
// both users through the UI, sends a RELIABLE message with a reference from A
// to B (B must show it, A must get a MESSAGE_CONFIRMATION), then a FAST reply
// from B to A (A must show it). Then both log in again with "acknowledge": B
// must acknowledge a numbered message (an ACK {upTo} leaves its log), and after
// B reconnects, the resume must send what was kept while B was away but not
// the acknowledged message. Last, both join a channel, A posts, both show the
// post (B with its seq), Members lists both, and B leaves.
//
// Environment:
//   LINKER_PAGE_URL        page URL, e.g. http://127.0.0.1:4400/   (required)
//   LINKER_WS_URL          WebSocket URL, e.g. ws://127.0.0.1:8088/ws (required)
//   LINKER_SCREENSHOT_DIR  if set, page-a.png and page-b.png are written there
//   LINKER_CHROMIUM        chromium binary (default /usr/bin/chromium)
//
// Prints one line per step; exits 0 on success, 1 with a reason on failure.
// Setup: scripts/setup-browser.sh. Run: node test-script/browser/two-pages.mjs
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const STEP_TIMEOUT_MS = 10_000; // every wait for the page
const TOTAL_TIMEOUT_MS = 90_000; // the whole test, whatever happens

const PAGE_URL = process.env.LINKER_PAGE_URL;
const WS_URL = process.env.LINKER_WS_URL;
const SCREENSHOT_DIR = process.env.LINKER_SCREENSHOT_DIR || '';
const CHROMIUM = process.env.LINKER_CHROMIUM || '/usr/bin/chromium';

const started = Date.now();
const elapsed = () => ((Date.now() - started) / 1000).toFixed(1).padStart(5) + 's';
const step = (msg) => console.log(`[two-pages ${elapsed()}] ${msg}`);

class TestFailure extends Error {}
const fail = (reason) => { throw new TestFailure(reason); };

function randomUser(exclude) {
  for (;;) {
    const id = 'ANZ-' + String(Math.floor(Math.random() * 1_000_000)).padStart(6, '0');
    if (id !== 'ANZ-123223' && id !== exclude) return id; // not the master user
  }
}

function pageUrlFor(user) {
  const url = new URL(PAGE_URL);
  url.searchParams.set('ws', WS_URL);
  url.searchParams.set('user', user);
  return url.toString();
}

// Waits until `selector`'s text is none of `transient`, then returns it.
async function settledText(page, selector, transient) {
  const handle = await page.waitForFunction(
    ([sel, skip]) => {
      const el = document.querySelector(sel);
      if (!el) return false;
      const text = el.textContent.trim();
      return skip.includes(text) ? false : text;
    },
    [selector, transient],
    { timeout: STEP_TIMEOUT_MS },
  );
  return handle.jsonValue();
}

// Waits until an element matching `selector` has exactly `text`.
async function waitForExactText(page, selector, text, what) {
  try {
    await page.waitForFunction(
      ([sel, want]) => [...document.querySelectorAll(sel)].some((el) => el.textContent.trim() === want),
      [selector, text],
      { timeout: STEP_TIMEOUT_MS },
    );
  } catch (e) {
    if (e.name === 'TimeoutError') fail(`${what}: no ${selector} with text "${text}" within ${STEP_TIMEOUT_MS / 1000}s`);
    throw e;
  }
}

// Waits for an incoming frame of `type` in the page's log and returns the
// latest such frame, parsed.
async function waitForIncomingFrame(page, type, what) {
  const selector = `#log .frame.in[data-type="${type}"]`;
  try {
    await page.waitForSelector(selector, { timeout: STEP_TIMEOUT_MS });
  } catch (e) {
    if (e.name === 'TimeoutError') fail(`${what}: no incoming ${type} frame within ${STEP_TIMEOUT_MS / 1000}s`);
    throw e;
  }
  const text = await page.locator(selector).last().locator('pre').textContent();
  try {
    return JSON.parse(text);
  } catch {
    return fail(`${what}: the ${type} frame is not JSON: ${text}`);
  }
}

async function connectAndAuth(page, name, user) {
  const shownUrl = await page.inputValue('#ws-url');
  const shownUser = await page.inputValue('#user-id');
  if (shownUrl !== WS_URL) fail(`${name}: #ws-url is "${shownUrl}", expected the ?ws= value "${WS_URL}"`);
  if (shownUser !== user) fail(`${name}: #user-id is "${shownUser}", expected the ?user= value "${user}"`);

  await page.click('#connect');
  // The click sets "connecting" at once; wait for what follows it.
  const state = await settledText(page, '#state', ['connecting']).catch((e) => {
    if (e.name === 'TimeoutError') fail(`${name}: still not connected to ${WS_URL} after ${STEP_TIMEOUT_MS / 1000}s`);
    throw e;
  });
  if (state !== 'connected') fail(`${name}: #state is "${state}" after connecting`);
  step(`${name} (${user}) connected`);

  await page.click('#auth');
  const auth = await settledText(page, '#auth-state', ['not authenticated']).catch((e) => {
    if (e.name === 'TimeoutError') fail(`${name}: no AUTH_CLIENT_REPLY shown within ${STEP_TIMEOUT_MS / 1000}s`);
    throw e;
  });
  if (auth !== 'authenticated') fail(`${name}: #auth-state is "${auth}"`);
  step(`${name} (${user}) authenticated`);
}

async function sendMessage(page, { to, content, feature, reference }) {
  await page.fill('#to', to);
  await page.fill('#content', content);
  await page.selectOption('#feature', feature);
  await page.fill('#reference', reference || '');
  await page.check('#confirmation');
  await page.click('#send');
}

// Disconnects if connected, sets "acknowledge", logs in again and waits for the resume to
// end (RESUME_COMPLETE). Returns that frame.
async function reconnectAcking(page, name, user) {
  if (await page.isEnabled('#disconnect')) await page.click('#disconnect');
  await waitForExactText(page, '#state', 'disconnected', name);
  await page.check('#ack');
  const from = await logCount(page);
  await connectAndAuth(page, name, user);
  const auth = await waitForFrame(page, from, 'out', 'AUTH_CLIENT', name);
  if (auth.data.ack !== true) fail(`${name}: AUTH_CLIENT data has no "ack": true: ${JSON.stringify(auth)}`);
  const reply = await waitForFrame(page, from, 'in', 'AUTH_CLIENT_REPLY', name);
  if (reply.data.ack !== true) fail(`${name}: AUTH_CLIENT_REPLY does not say "ack": true: ${JSON.stringify(reply)}`);
  const done = await waitForFrame(page, from, 'in', 'RESUME_COMPLETE', name);
  await waitForExactText(page, '#resume-state', `complete, ${done.data.resent} resent`, name);
  step(`${name} logged in again with "acknowledge"; resume complete, ${done.data.resent} resent`);
  return done;
}

// How many entries (frames and events) a page's log holds: a mark to look
// for frames after.
async function logCount(page) {
  return page.$$eval('#log > *', (els) => els.length);
}

// The frames of a page's log after the mark `from`: {dir, type, frame}.
async function framesSince(page, from) {
  return page.$$eval('#log > *', (els, start) => els.slice(start)
    .filter((el) => el.classList.contains('frame'))
    .map((el) => {
      let frame = null;
      try { frame = JSON.parse(el.querySelector('pre').textContent); } catch { /* not JSON */ }
      return { dir: el.classList.contains('in') ? 'in' : 'out', type: el.dataset.type, frame };
    }), from);
}

// Waits for a frame of `type` in direction `dir` ("in" or "out") after the
// mark `from` for which `match(frame)` holds, and returns it.
async function waitForFrame(page, from, dir, type, what, match = () => true) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  for (;;) {
    const found = (await framesSince(page, from))
      .find((f) => f.dir === dir && f.type === type && f.frame && match(f.frame));
    if (found) return found.frame;
    if (Date.now() > deadline) {
      fail(`${what}: no ${dir === 'in' ? 'incoming' : 'outgoing'} ${type} frame as expected within ${STEP_TIMEOUT_MS / 1000}s`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

// The conversation's channel posts: {text, channel, seq}.
async function channelPosts(page) {
  return page.$$eval('#conversation li.post', (els) => els.map((el) => ({
    text: el.textContent.trim(), channel: el.dataset.channel, seq: el.dataset.seq,
  })));
}

async function acknowledgedDelivery(A, B, userA, userB) {
  await reconnectAcking(A, 'A', userA);
  await reconnectAcking(B, 'B', userB);

  // A -> B: B gets it numbered and acknowledges it; A gets MESSAGE_ACCEPTED.
  let fromA = await logCount(A);
  let fromB = await logCount(B);
  const ref1 = 'ack1-' + Date.now().toString(36);
  const first = `acked by ${userB} (${ref1})`;
  await sendMessage(A, { to: userB, content: first, feature: 'RELIABLE', reference: ref1 });
  step(`A sent a RELIABLE MESSAGE to ${userB} with reference ${ref1}`);

  await waitForFrame(A, fromA, 'in', 'MESSAGE_ACCEPTED', 'A', (f) => f.data.reference === ref1);
  await waitForExactText(A, '#conversation li.note', `\u2713 accepted: reference ${ref1}`, 'A');
  step(`A got MESSAGE_ACCEPTED for ${ref1} and shows it`);

  const m1 = await waitForFrame(B, fromB, 'in', 'MESSAGE', 'B', (f) => f.reference === ref1);
  if (!Number.isInteger(m1.seq) || typeof m1.id !== 'string') {
    fail(`B: the MESSAGE to an acking socket has no seq and id: ${JSON.stringify(m1)}`);
  }
  await waitForExactText(B, '#conversation li', `${userA}: ${first}`, 'B');
  const ack1 = await waitForFrame(B, fromB, 'out', 'ACK', 'B', (f) => f.data.upTo >= m1.seq);
  if (ack1.data.upTo !== m1.seq) fail(`B: ACK upTo ${ack1.data.upTo}, expected the seq received, ${m1.seq}`);
  await waitForExactText(B, '#acked', String(m1.seq), 'B');
  step(`B got the MESSAGE as seq ${m1.seq} and sent ACK {upTo: ${m1.seq}}`);

  const c1 = await waitForFrame(A, fromA, 'in', 'MESSAGE_CONFIRMATION', 'A', (f) => f.data.reference === ref1);
  if (Number.isInteger(c1.seq)) {
    await waitForFrame(A, fromA, 'out', 'ACK', 'A', (f) => f.data.upTo >= c1.seq);
    step(`A got MESSAGE_CONFIRMATION as seq ${c1.seq} and acknowledged it`);
  }

  // B goes away; A sends another: it is kept for B.
  await B.click('#disconnect');
  await waitForExactText(B, '#state', 'disconnected', 'B');
  fromA = await logCount(A);
  const ref2 = 'ack2-' + Date.now().toString(36);
  const second = `kept for ${userB} (${ref2})`;
  await sendMessage(A, { to: userB, content: second, feature: 'RELIABLE', reference: ref2 });
  await waitForFrame(A, fromA, 'in', 'MESSAGE_ACCEPTED', 'A', (f) => f.data.reference === ref2);
  step(`B disconnected; A sent ${ref2} and got MESSAGE_ACCEPTED (kept for B)`);

  // B comes back: the resume sends the kept message, not the acknowledged one.
  fromB = await logCount(B);
  const done = await reconnectAcking(B, 'B', userB);
  const frames = (await framesSince(B, fromB)).filter((f) => f.dir === 'in' && f.frame);
  const resent = frames.filter((f) => f.type === 'MESSAGE').map((f) => f.frame);
  if (resent.some((f) => f.id === m1.id || f.reference === ref1)) {
    fail(`B: the acknowledged message (seq ${m1.seq}, ${ref1}) was sent again after reconnecting`);
  }
  const m2 = resent.find((f) => f.reference === ref2);
  if (!m2 || !Number.isInteger(m2.seq)) fail(`B: the message kept while away (${ref2}) was not resent numbered: ${JSON.stringify(resent)}`);
  if (m2.seq <= m1.seq) fail(`B: the kept message has seq ${m2.seq}, not above the acknowledged ${m1.seq}`);
  const order = frames.map((f) => f.type);
  if (order.indexOf('MESSAGE') > order.indexOf('RESUME_COMPLETE')) fail(`B: the kept message came after RESUME_COMPLETE: ${order.join(' ')}`);
  if (done.data.resent !== 1) fail(`B: RESUME_COMPLETE says ${done.data.resent} resent, expected 1`);
  step(`B reconnected: ${ref2} resent as seq ${m2.seq} before RESUME_COMPLETE; ${ref1} (acknowledged) not resent`);

  await waitForFrame(B, fromB, 'out', 'ACK', 'B', (f) => f.data.upTo === m2.seq);
  await waitForExactText(B, '#acked', String(m2.seq), 'B');
  step(`B acknowledged the resent message (ACK {upTo: ${m2.seq}})`);
}

async function channels(A, B, userA, userB) {
  for (const [name, page] of [['A', A], ['B', B]]) {
    const shown = await page.inputValue('#channel');
    if (shown !== 'ANZ/general') fail(`${name}: #channel is "${shown}", expected the default "ANZ/general"`);
  }
  // A channel of its own, so that another run's posts are not replayed.
  const channel = 'ANZ/browser-' + Date.now().toString(36);

  for (const [name, page, history] of [['A', A, ''], ['B', B, '5']]) {
    const from = await logCount(page);
    await page.fill('#channel', channel);
    await page.fill('#channel-history', history);
    await page.check('#channel-echo');
    await page.click('#subscribe');
    await waitForFrame(page, from, 'in', 'SUBSCRIBED', name, (f) => f.data.channel === channel);
    await waitForExactText(page, '#channel-subs', channel, name);
    if (history) {
      const replay = await waitForFrame(page, from, 'in', 'CHANNEL_HISTORY_COMPLETE', name, (f) => f.data.channel === channel);
      if (replay.data.replayed !== 0) fail(`${name}: a new channel replayed ${replay.data.replayed} posts`);
    }
    step(`${name} subscribed to ${channel}${history ? ` with history ${history}` : ''}`);
  }

  const reference = 'post-' + Date.now().toString(36);
  const post = `posted by ${userA}`;
  await A.fill('#channel-content', post);
  await A.selectOption('#feature', 'RELIABLE');
  await A.fill('#reference', reference);
  await A.click('#channel-post');
  step(`A posted a RELIABLE CHANNEL_MESSAGE to ${channel}`);

  for (const [name, page] of [['A', A], ['B', B]]) {
    try {
      await page.waitForFunction(
        ([ch, suffix]) => [...document.querySelectorAll('#conversation li.post')]
          .some((el) => el.dataset.channel === ch && el.textContent.trim().endsWith(suffix)),
        [channel, `${userA}: ${post}`],
        { timeout: STEP_TIMEOUT_MS },
      );
    } catch (e) {
      if (e.name === 'TimeoutError') fail(`${name}: the post to ${channel} is not shown within ${STEP_TIMEOUT_MS / 1000}s`);
      throw e;
    }
    const shown = (await channelPosts(page)).find((p) => p.channel === channel);
    if (!/^[1-9][0-9]*$/.test(shown.seq || '')) fail(`${name}: the post has no seq: ${JSON.stringify(shown)}`);
    const want = `[${channel} #${shown.seq}] ${userA}: ${post}`;
    if (shown.text !== want) fail(`${name}: the post shows as "${shown.text}", expected "${want}"`);
    step(`${name} shows "${shown.text}"`);
  }

  const both = [userA, userB].sort().join(', ');
  await B.click('#members');
  await waitForExactText(B, '#channel-members', `${channel}: ${both}`, 'B');
  step(`B: Members of ${channel} are ${both}`);

  const fromB = await logCount(B);
  await B.click('#unsubscribe');
  await waitForFrame(B, fromB, 'in', 'UNSUBSCRIBED', 'B', (f) => f.data.channel === channel);
  await waitForExactText(B, '#channel-subs', 'none', 'B');
  await A.click('#members');
  await waitForExactText(A, '#channel-members', `${channel}: ${userA}`, 'A');
  step(`B unsubscribed; A: Members of ${channel} is ${userA} alone`);
}

// A one-line summary of a page's log, to explain a failure.
async function logSummary(page) {
  return page.$$eval('#log > *', (els) => els.map((el) =>
    el.classList.contains('frame')
      ? (el.classList.contains('in') ? '<' : '>') + el.dataset.type
      : '(' + el.textContent.replace(/^\S+\s+/, '').trim() + ')',
  ).join(' '));
}

async function run(browser, pages) {
  const userA = randomUser();
  const userB = randomUser(userA);

  for (const name of ['A', 'B']) {
    // One context each: two independent users, like two separate browsers.
    const context = await browser.newContext({ viewport: { width: 1280, height: 1120 } });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    page.on('pageerror', (err) => { pages.errors.push(`${name}: page error: ${err.message}`); });
    page.on('console', (msg) => {
      if (msg.type() === 'error') console.log(`[two-pages ${elapsed()}] (${name} console error: ${msg.text()})`);
    });
    pages[name] = page;
  }
  const { A, B } = pages;

  for (const [name, page, user] of [['A', A, userA], ['B', B, userB]]) {
    const url = pageUrlFor(user);
    const resp = await page.goto(url, { timeout: STEP_TIMEOUT_MS }).catch((e) => {
      fail(`${name}: cannot open ${url}: ${e.message.split('\n')[0]}`);
    });
    if (!resp || !resp.ok()) fail(`${name}: GET ${url} answered ${resp ? resp.status() : 'nothing'}`);
    await page.waitForSelector('#state', { timeout: STEP_TIMEOUT_MS });
    if (pages.errors.length) fail(pages.errors[0]);
    step(`${name} opened ${url}`);
  }

  await connectAndAuth(A, 'A', userA);
  await connectAndAuth(B, 'B', userB);

  // A -> B, RELIABLE, with a reference: B shows it, A gets the confirmation.
  const reference = 'ref-' + Date.now().toString(36);
  const hello = `hello from ${userA} (${reference})`;
  await sendMessage(A, { to: userB, content: hello, feature: 'RELIABLE', reference });
  step(`A sent a RELIABLE MESSAGE to ${userB} with reference ${reference}`);

  await waitForExactText(B, '#conversation li', `${userA}: ${hello}`, 'B');
  step(`B shows "${userA}: ${hello}"`);

  const received = await waitForIncomingFrame(B, 'MESSAGE', 'B');
  if (received.reference !== reference) {
    fail(`B: the MESSAGE frame's reference is ${JSON.stringify(received.reference)}, expected "${reference}"`);
  }
  step('B\'s MESSAGE frame carries the reference');

  const confirmation = await waitForIncomingFrame(A, 'MESSAGE_CONFIRMATION', 'A');
  if (!confirmation.data || confirmation.data.reference !== reference) {
    fail(`A: MESSAGE_CONFIRMATION is ${JSON.stringify(confirmation)}, expected data.reference "${reference}"`);
  }
  step(`A got MESSAGE_CONFIRMATION for ${reference}`);

  // B -> A, FAST, no reference: A shows it.
  const reply = `reply from ${userB}`;
  await sendMessage(B, { to: userA, content: reply, feature: 'FAST', reference: '' });
  step(`B sent a FAST MESSAGE to ${userA}`);

  await waitForExactText(A, '#conversation li', `${userB}: ${reply}`, 'A');
  step(`A shows "${userB}: ${reply}"`);

  await acknowledgedDelivery(A, B, userA, userB);
  await channels(A, B, userA, userB);

  if (pages.errors.length) fail(pages.errors[0]);
}

async function screenshots(pages) {
  if (!SCREENSHOT_DIR) return;
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  for (const name of ['A', 'B']) {
    if (!pages[name]) continue;
    const file = path.join(SCREENSHOT_DIR, `page-${name.toLowerCase()}.png`);
    try {
      await pages[name].screenshot({ path: file, timeout: STEP_TIMEOUT_MS });
      step(`screenshot ${file}`);
    } catch (e) {
      step(`screenshot ${file} failed: ${e.message.split('\n')[0]}`);
    }
  }
}

async function main() {
  if (!PAGE_URL || !WS_URL) {
    console.error('two-pages: FAIL: set LINKER_PAGE_URL (e.g. http://127.0.0.1:4400/) and LINKER_WS_URL (e.g. ws://127.0.0.1:8088/ws)');
    return 1;
  }

  let browser = null;
  const pages = { errors: [] };
  let code = 1;
  let timer = null;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 30_000,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
    step(`launched ${CHROMIUM} ${browser.version()}`);

    const overall = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new TestFailure(`the whole test took more than ${TOTAL_TIMEOUT_MS / 1000}s`)), TOTAL_TIMEOUT_MS);
    });
    const test = run(browser, pages);
    test.catch(() => {}); // if the overall timeout wins, a later rejection is expected
    await Promise.race([test, overall]);
    await screenshots(pages);
    console.log(`two-pages: PASS (${elapsed().trim()})`);
    code = 0;
  } catch (e) {
    const reason = e instanceof TestFailure ? e.message : (e && e.stack) || String(e);
    console.error(`two-pages: FAIL: ${reason}`);
    for (const name of ['A', 'B']) {
      if (!pages[name]) continue;
      const summary = await Promise.race([
        logSummary(pages[name]).catch(() => '(unavailable)'),
        new Promise((resolve) => setTimeout(() => resolve('(unavailable)'), 2000)),
      ]);
      console.error(`two-pages:   ${name} log: ${summary || '(empty)'}`);
    }
    await screenshots(pages);
  } finally {
    clearTimeout(timer);
    if (browser) {
      // Closing should be quick; if it is not, exiting kills chromium anyway.
      await Promise.race([browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 10_000))]);
    }
  }
  return code;
}

process.exit(await main());
