// End to end with the libraries VS Code's client is built on (vscode-jsonrpc and
// vscode-languageserver-protocol): spawn bitmamba-lsp, initialize with VS Code's client
// capabilities, open a document, edit it incrementally and ask for inline completions.
//
//   npm test                       (bitmamba-lsp from $BITMAMBA_LSP, ../../.venv/bin, or PATH)
import { strict as assert } from 'node:assert';
import { ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  ClientCapabilities,
  createProtocolConnection,
  DidChangeConfigurationNotification,
  DidChangeTextDocumentNotification,
  DidCloseTextDocumentNotification,
  DidOpenTextDocumentNotification,
  ExecuteCommandRequest,
  ExitNotification,
  InitializedNotification,
  InitializeRequest,
  InitializeResult,
  InlineCompletionItem,
  InlineCompletionList,
  InlineCompletionRequest,
  InlineCompletionTriggerKind,
  LogMessageNotification,
  LogMessageParams,
  ProtocolConnection,
  ShutdownRequest,
  StreamMessageReader,
  StreamMessageWriter,
} from 'vscode-languageserver-protocol/node';
import { DaemonStatus, SERVER_SETTINGS, serverSettings, statusBarText, statusDetails } from '../settings';

const EXTENSION_DIR = path.resolve(__dirname, '..', '..');

function serverCommand(): string {
  const fromEnv = process.env.BITMAMBA_LSP;
  if (fromEnv) {
    return fromEnv;
  }
  const venv = path.resolve(EXTENSION_DIR, '..', '..', '.venv', 'bin', 'bitmamba-lsp');
  return existsSync(venv) ? venv : 'bitmamba-lsp';
}

/** What VS Code 1.9x's language client announces (the parts that matter to this daemon). */
const VSCODE_CAPABILITIES: ClientCapabilities = {
  general: {
    positionEncodings: ['utf-16'],
    regularExpressions: { engine: 'ECMAScript', version: 'ES2020' },
    markdown: { parser: 'marked', version: '1.1.0' },
    staleRequestSupport: { cancel: true, retryOnContentModified: [] },
  },
  textDocument: {
    synchronization: { dynamicRegistration: true, willSave: true, willSaveWaitUntil: true, didSave: true },
    inlineCompletion: { dynamicRegistration: true },
    completion: {
      dynamicRegistration: true,
      contextSupport: true,
      completionItem: { snippetSupport: true, insertReplaceSupport: true },
    },
  },
  workspace: {
    applyEdit: true,
    configuration: true,
    didChangeConfiguration: { dynamicRegistration: true },
    executeCommand: { dynamicRegistration: true },
    workspaceFolders: true,
  },
  window: { workDoneProgress: true, showMessage: {}, showDocument: { support: true } },
};

/** The extension's package.json defaults for the settings it forwards to the daemon. */
function packageDefaults(): Record<string, unknown> {
  const pkg = JSON.parse(readFileSync(path.join(EXTENSION_DIR, 'package.json'), 'utf8'));
  const props = pkg.contributes.configuration.properties as Record<string, { default: unknown }>;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(props)) {
    out[key.replace(/^bitmamba\./, '')] = value.default;
  }
  return out;
}

const utf16 = (s: string) => s.length; // JavaScript strings are UTF-16

describe('bitmamba-lsp through vscode-languageserver-protocol', () => {
  let proc: ChildProcess;
  let conn: ProtocolConnection;
  let init: InitializeResult;
  const logs: LogMessageParams[] = [];
  const stderr: string[] = [];

  before(async () => {
    proc = spawn(serverCommand(), ['--threads', '1'], { stdio: ['pipe', 'pipe', 'pipe'] });
    proc.stderr!.on('data', (d: Buffer) => stderr.push(d.toString()));
    conn = createProtocolConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
    conn.onNotification(LogMessageNotification.type, (p: LogMessageParams) => {
      logs.push(p);
    });
    // what VS Code answers to the daemon's own requests
    conn.onRequest('window/workDoneProgress/create', () => null);
    conn.onRequest('client/registerCapability', () => null);
    conn.listen();
    const settings = serverSettings((k) => packageDefaults()[k]);
    init = await conn.sendRequest(InitializeRequest.type, {
      processId: process.pid,
      clientInfo: { name: 'Visual Studio Code', version: '1.100.0' },
      rootUri: null,
      capabilities: VSCODE_CAPABILITIES,
      // minConfidence 0: protocol mechanics need suggestions shown (abstention has its own tests)
      initializationOptions: { ...settings, debounceMs: 0, speculative: false, minConfidence: 0 },
      workspaceFolders: null,
    });
    await conn.sendNotification(InitializedNotification.type, {});
    const t0 = Date.now();
    for (;;) {
      const s = await conn.sendRequest<DaemonStatus>('bitmamba/status', null);
      if (s.model_state === 'ready') {
        break;
      }
      assert.notEqual(s.model_state, 'failed', String(s.model_error));
      assert.ok(Date.now() - t0 < 60000, 'the model did not load');
      await new Promise((r) => setTimeout(r, 20));
    }
  });

  after(async () => {
    if (conn) {
      await conn.sendRequest(ShutdownRequest.type);
      await conn.sendNotification(ExitNotification.type);
      const code = await new Promise<number | null>((resolve) => {
        if (proc.exitCode !== null) {
          resolve(proc.exitCode);
        } else {
          proc.on('exit', (c) => resolve(c));
        }
      });
      conn.dispose();
      assert.equal(code, 0, stderr.join(''));
    }
  });

  it('advertises inline completion, utf-16 and incremental sync', () => {
    const caps = init.capabilities;
    assert.ok(caps.inlineCompletionProvider, 'inlineCompletionProvider');
    assert.equal(caps.positionEncoding ?? 'utf-16', 'utf-16');
    const sync = caps.textDocumentSync;
    assert.equal(typeof sync === 'object' ? sync.change : sync, 2); // Incremental
    assert.ok(caps.executeCommandProvider?.commands.includes('bitmamba.accept'));
    assert.equal(caps.completionProvider, undefined); // completionFallback is off by default
  });

  it('takes every setting the extension forwards', async () => {
    const before = logs.length;
    await conn.sendNotification(DidChangeConfigurationNotification.type, {
      settings: { bitmamba: { ...serverSettings((k) => packageDefaults()[k]), debounceMs: 0, speculative: false, minConfidence: 0 } },
    });
    await conn.sendRequest('bitmamba/status', null); // the notification has been handled
    const warnings = logs.slice(before).filter((l) => /setting/.test(l.message));
    assert.deepEqual(warnings, []);
    const forwarded = Object.keys(packageDefaults()).filter((k) => (SERVER_SETTINGS as readonly string[]).includes(k));
    assert.deepEqual(forwarded.sort(), [...SERVER_SETTINGS].sort());
  });

  async function complete(uri: string, line: number, character: number): Promise<InlineCompletionItem[]> {
    const res = await conn.sendRequest(InlineCompletionRequest.type, {
      textDocument: { uri },
      position: { line, character },
      context: { triggerKind: InlineCompletionTriggerKind.Automatic },
    });
    if (res === null) {
      return [];
    }
    return Array.isArray(res) ? res : (res as InlineCompletionList).items;
  }

  it('completes after an incremental edit, with a utf-16 range', async () => {
    const uri = 'file:///tmp/bitmamba-vscode/point.py';
    // a line with a character outside the BMP (2 UTF-16 units) before the cursor's line
    const start = '# 🐍 points\nclass Point:\n    def __init__(sel';
    await conn.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri, languageId: 'python', version: 1, text: start + '\n' },
    });
    const row = 2;
    const col = utf16('    def __init__(sel');
    await conn.sendNotification(DidChangeTextDocumentNotification.type, {
      textDocument: { uri, version: 2 },
      contentChanges: [{ range: { start: { line: row, character: col }, end: { line: row, character: col } }, text: 'f' }],
    });
    const items = await complete(uri, row, col + 1);
    assert.equal(items.length, 1);
    const item = items[0];
    assert.equal(typeof item.insertText, 'string');
    const text = item.insertText as string;
    assert.ok(text.length > 0);
    assert.deepEqual(item.range?.start, { line: row, character: col + 1 });
    assert.equal(item.range?.end.line, row);
    assert.equal(item.range?.end.character, col + 1); // nothing after the cursor to replace
    assert.ok(text.includes(')'), text); // the default model closes the parameter list
    assert.equal(item.command?.command, 'bitmamba.accept');

    // the same text opened in one piece gives the same suggestion: the edit landed where it should
    const fresh = 'file:///tmp/bitmamba-vscode/point-fresh.py';
    await conn.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri: fresh, languageId: 'python', version: 1, text: start + 'f\n' },
    });
    const again = await complete(fresh, row, col + 1);
    assert.equal(again[0]?.insertText, text);

    // accepting runs the item's command: the daemon counts it
    await conn.sendRequest(ExecuteCommandRequest.type, {
      command: item.command!.command,
      arguments: item.command!.arguments,
    });
    const s = await conn.sendRequest<DaemonStatus>('bitmamba/status', null);
    assert.equal(s.accepted, 1);
    assert.ok(statusBarText(s).includes(String(s.model)));
    assert.match(statusDetails(s), /accepted 1/);
  });

  it('counts columns in UTF-16 code units on a line with an emoji', async () => {
    const uri = 'file:///tmp/bitmamba-vscode/emoji.py';
    // an edit in the middle of a line after a surrogate pair: "nme" -> "name"
    const typo = "    label = '🐍' + nme";
    await conn.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri, languageId: 'python', version: 1, text: `def show(name):\n${typo}\n` },
    });
    const at = utf16("    label = '🐍' + n");
    await conn.sendNotification(DidChangeTextDocumentNotification.type, {
      textDocument: { uri, version: 2 },
      contentChanges: [{ range: { start: { line: 1, character: at }, end: { line: 1, character: at } }, text: 'a' }],
    });
    const line = "    label = '🐍' + name";
    const items = await complete(uri, 1, utf16(line));
    assert.equal(items.length, 1);
    assert.deepEqual(items[0].range, {
      start: { line: 1, character: utf16(line) },
      end: { line: 1, character: utf16(line) },
    });
    // the same as for the text typed in one piece: the edit landed between "n" and "me" (closed
    // first: the daemon reads the other open documents, and this one would be one of them)
    await conn.sendNotification(DidCloseTextDocumentNotification.type, { textDocument: { uri } });
    const fresh = 'file:///tmp/bitmamba-vscode/emoji-fresh.py';
    await conn.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri: fresh, languageId: 'python', version: 1, text: `def show(name):\n${line}\n` },
    });
    const again = await complete(fresh, 1, utf16(line));
    assert.equal(again[0]?.insertText, items[0].insertText);
  });

  it('replaces closing punctuation after the cursor instead of duplicating it', async () => {
    const uri = 'file:///tmp/bitmamba-vscode/close.py';
    const line = '    print(';
    await conn.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri, languageId: 'python', version: 1, text: `def show(name):\n${line})\n` },
    });
    const items = await complete(uri, 1, utf16(line));
    for (const item of items) {
      const end = item.range!.end;
      assert.equal(end.line, 1);
      assert.ok(end.character === utf16(line) || end.character === utf16(line) + 1);
      if (end.character === utf16(line) + 1) {
        assert.ok((item.insertText as string).includes(')'), 'the replaced ")" must be re-inserted');
      }
    }
  });
});
