// Drives a real VS Code (code-server in headless Chromium, through playwright-core) for
// tests/test_editors_vscode_real.py: opens the workspace's Python file, moves to its end, types,
// waits for the extension's inline suggestion (ghost text), presses Tab, reads the editor and saves.
// Writes what it saw as JSON to $BITMAMBA_TEST_OUT (also on failure, with `error`), and screenshots
// to $BITMAMBA_TEST_SHOTS.
//
// env: BITMAMBA_PLAYWRIGHT (the playwright-core folder), BITMAMBA_CHROMIUM (the browser binary),
// BITMAMBA_VSCODE_URL (code-server's workbench URL, with ?folder=), BITMAMBA_TEST_FILE (the file's
// name, for Quick Open), BITMAMBA_TEST_TYPE (text typed at the end of the file),
// BITMAMBA_TEST_PROFILE (a new Chromium profile folder).
'use strict';
const fs = require('fs');
const path = require('path');

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const { chromium } = require(env('BITMAMBA_PLAYWRIGHT'));
const OUT = env('BITMAMBA_TEST_OUT');
const SHOTS = env('BITMAMBA_TEST_SHOTS');
const t0 = Date.now();
const res = { steps: [] };
const step = (name, extra) => res.steps.push({ name, ms: Date.now() - t0, ...(extra || {}) });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The text of the editor's rendered lines, top to bottom (the file is small: every line is rendered).
// Monaco renders spaces as U+00A0; injected text (the ghost) is left out.
async function editorLines(page) {
  return page.evaluate(() => {
    const lines = [...document.querySelectorAll('.monaco-editor .view-lines .view-line')];
    lines.sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top));
    return lines.map((line) => {
      let s = '';
      const walk = (node) => {
        if (node.nodeType === Node.TEXT_NODE) {
          s += node.textContent;
        } else if (node.nodeType === Node.ELEMENT_NODE) {
          const cls = node.classList;
          if ([...cls].some((c) => c.startsWith('ghost-text') || c.startsWith('ced-'))) return;
          node.childNodes.forEach(walk);
        }
      };
      walk(line);
      return s.replace(/\u00a0/g, ' ');
    });
  });
}

// The ghost text on screen: the injected part on the cursor's line (`.ghost-text-decoration`) and the
// lines VS Code adds below it for a multi-line suggestion (`.ghost-text` view zone).
async function ghost(page) {
  return page.evaluate(() => {
    const txt = (el) => el.textContent.replace(/\u00a0/g, ' ');
    const inline = [...document.querySelectorAll('.monaco-editor .view-lines .ghost-text-decoration')].map(txt);
    const more = [...document.querySelectorAll('.monaco-editor .ghost-text .view-line')].map(txt);
    const preview = document.querySelectorAll('.monaco-editor .ghost-text-decoration-preview').length;
    return { inline, more, preview, text: inline.join('') + more.map((l) => '\n' + l).join('') };
  });
}

async function statusItem(page) {
  return page.evaluate(() => {
    const items = [...document.querySelectorAll('.statusbar-item')];
    const it = items.find((el) => (el.id || '').toLowerCase().includes('bitmamba'));
    if (!it) return null;
    const a = it.querySelector('a') || it;
    return {
      id: it.id,
      text: a.textContent.trim(),
      label: it.getAttribute('aria-label') || a.getAttribute('aria-label') || '',
      icons: [...it.querySelectorAll('.codicon')].map((c) => c.className),
    };
  });
}

async function waitFor(what, fn, timeoutMs, everyMs = 50) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

async function main() {
  const context = await chromium.launchPersistentContext(env('BITMAMBA_TEST_PROFILE'), {
    executablePath: env('BITMAMBA_CHROMIUM'),
    headless: true,
    // the closed network: nothing that phones home, else Chromium stalls on it
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage'],
    viewport: { width: 1280, height: 800 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const logs = [];
  page.on('console', (m) => { if (m.type() === 'error') logs.push(m.text().slice(0, 300)); });
  page.on('pageerror', (e) => logs.push(`pageerror: ${String(e).slice(0, 300)}`));
  res.console = logs;
  try {
    await page.goto(env('BITMAMBA_VSCODE_URL'), { waitUntil: 'domcontentloaded', timeout: 60000 });
    await page.waitForSelector('.monaco-workbench .part.editor', { timeout: 60000 });
    step('workbench');
    // the extension activates on startup: its status bar item appears, then the model's name
    res.status_initial = await waitFor('the bitmamba status bar item', () => statusItem(page), 30000);
    step('status item', { status: res.status_initial });
    // and the language client has started (the item leaves "loading" once the daemon answered):
    // a document typed into before that sometimes never gets an inline-completion request
    res.status_ready = await waitFor('the client to start', async () => {
      const st = await statusItem(page);
      return st && !String(st.label || st.text).includes('loading') ? st : null;
    }, 30000).catch(() => null);
    step('client started', { status: res.status_ready });

    // open the file through Quick Open
    const file = env('BITMAMBA_TEST_FILE');
    await waitFor('Quick Open', async () => {
      await page.keyboard.press('Control+P');
      return page.waitForSelector('.quick-input-widget input', { state: 'visible', timeout: 2000 })
        .then(() => true, () => false);
    }, 30000, 500);
    await page.keyboard.type(file);
    await waitFor('the file in Quick Open', () => page.evaluate((f) =>
      [...document.querySelectorAll('.quick-input-list .monaco-list-row')]
        .some((r) => r.textContent.includes(f)), file), 20000);
    await page.keyboard.press('Enter');
    await page.waitForSelector(`.tab[aria-label*="${file}"]`, { timeout: 20000 });
    const focused = () => page.evaluate(() => {
      const a = document.activeElement;
      return a && a.closest('.editor-instance .monaco-editor') ? a.className || a.tagName : null;
    });
    res.focus = await waitFor('the editor to have the focus', focused, 10000)
      .catch(async () => (await page.click('.editor-instance .monaco-editor .view-lines'), focused()));
    res.before = await waitFor('the file in the editor', async () => {
      const l = await editorLines(page);
      return l.length && l.join('').trim() ? l : null;
    }, 20000);
    step('opened', { lines: res.before });

    // type at the end of the file, key by key (each keystroke is an edit and a new request)
    await page.keyboard.press('Control+End');
    const typed = env('BITMAMBA_TEST_TYPE');
    await page.keyboard.type(typed, { delay: 25 });
    step('typed');
    // the view draws keystrokes a frame later (on a loaded machine, several): wait for the last one
    const want = res.before[res.before.length - 1] + typed;
    res.typed_lines = await waitFor('the typed text drawn in the editor', async () => {
      const l = await editorLines(page);
      return l.length && l[l.length - 1] === want ? l : null;
    }, 10000).catch(() => editorLines(page));

    // the ghost text: wait for it, then until it has stayed the same for 1 s (the last request's)
    // (VS Code asks by itself as keys are typed; on a loaded machine it sometimes never does: after
    // 8 s the driver asks as a user would, with "Trigger Inline Suggestion", Alt+\)
    let last = null;
    let since = Date.now();
    const started = Date.now();
    let triggered = false;
    let seen = false;
    await waitFor('the ghost text (.ghost-text-decoration)', async () => {
      if (!triggered && !seen && Date.now() - started > 8000) {
        triggered = true;
        res.triggered = true;
        await page.keyboard.press('Alt+Backslash');
      }
      const g = await ghost(page);
      seen = seen || Boolean(g.text);
      const key = JSON.stringify(g);
      if (key !== last) {
        last = key;
        since = Date.now();
      }
      return g.text && Date.now() - since >= 1000 ? g : null;
    }, 30000);
    res.ghost = JSON.parse(last);
    res.lines_with_ghost = await editorLines(page);
    step('ghost', { ghost: res.ghost.text });
    await page.screenshot({ path: path.join(SHOTS, 'ghost.png') });

    await page.keyboard.press('Tab');
    await waitFor('the ghost text to go', async () => !(await ghost(page)).text, 10000);
    await sleep(200);
    res.after = await editorLines(page);
    step('accepted', { lines: res.after });
    await page.screenshot({ path: path.join(SHOTS, 'accepted.png') });

    // save: the test reads the file too
    const dirty = () => page.evaluate((f) => {
      const tab = document.querySelector(`.tab[aria-label*="${f}"]`);
      return tab ? tab.classList.contains('dirty') : null;
    }, file);
    await waitFor('the tab to be marked dirty', dirty, 10000);
    await page.keyboard.press('Control+S');
    await waitFor('the saved tab (no dirty marker)', async () => (await dirty()) === false, 10000);
    step('saved');

    // the status bar once the daemon has timed the suggestion and counted its accept (the item's
    // bitmamba.accept command, run by VS Code on Tab); the extension polls bitmamba/status
    res.status = await waitFor('the status bar to count the accept', async () => {
      const s = await statusItem(page);
      return s && s.text.includes('·') && /accepted 1\b/.test(s.label) ? s : null;
    }, 15000, 200).catch(async () => statusItem(page));
    step('status', { status: res.status });
  } catch (err) {
    res.error = String(err && err.stack ? err.stack : err);
    res.error_lines = await editorLines(page).catch(() => null);
    res.error_ghost = await ghost(page).catch(() => null);
    res.error_status = await statusItem(page).catch(() => null);
    res.notifications = await page.evaluate(() =>
      [...document.querySelectorAll('.notification-list-item-message')].map((n) => n.textContent))
      .catch(() => null);
    await page.screenshot({ path: path.join(SHOTS, 'error.png') }).catch(() => {});
  } finally {
    res.seconds = (Date.now() - t0) / 1000;
    fs.writeFileSync(OUT, JSON.stringify(res, null, 2));
    await context.close().catch(() => {});
  }
}

main().catch((err) => {
  res.error = String(err && err.stack ? err.stack : err);
  fs.writeFileSync(OUT, JSON.stringify(res, null, 2));
  process.exitCode = 1;
});
