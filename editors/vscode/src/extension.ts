// bitmamba for VS Code: launches bitmamba-lsp over stdio with vscode-languageclient, which shows the
// daemon's textDocument/inlineCompletion items as ghost text (registered by default since
// vscode-languageclient 10). The item's `bitmamba.accept` command is registered by the client from
// the server's executeCommandProvider, so accepts are counted by the daemon.
import * as vscode from 'vscode';
import {
  DidChangeConfigurationNotification,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
  TransportKind,
} from 'vscode-languageclient/node';
import { DaemonStatus, serverSettings, statusBarText, statusDetails } from './settings';

const SECTION = 'bitmamba';
const STATUS_REQUEST = 'bitmamba/status';

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel;
let statusItem: vscode.StatusBarItem;
let pollTimer: NodeJS.Timeout | undefined;
let lastStatus: DaemonStatus | undefined;

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function currentServerSettings() {
  const c = config();
  return serverSettings((key) => c.get(key));
}

function createClient(): LanguageClient {
  const c = config();
  const command = c.get<string>('serverPath') || 'bitmamba-lsp';
  const args = c.get<string[]>('serverArgs') ?? [];
  // A warm start (later starts are forked by a warm process; Linux; see the README): asked for in
  // the environment, which an older bitmamba-lsp ignores (a flag would stop it starting), unless
  // the user's environment already says.
  const warm = c.get<boolean>('warmStart', true) && process.env.BITMAMBA_LSP_WARM === undefined;
  const options = warm ? { env: { ...process.env, BITMAMBA_LSP_WARM: '1' } } : undefined;
  const serverOptions: ServerOptions = {
    run: { command, args, options, transport: TransportKind.stdio },
    debug: { command, args: [...args, '--log-level', 'DEBUG'], options, transport: TransportKind.stdio },
  };
  const clientOptions: LanguageClientOptions = {
    // every file: the model completes code and prose alike
    documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
    initializationOptions: currentServerSettings(),
    outputChannel: output,
    traceOutputChannel: output,
    initializationFailedHandler: (error) => {
      output.appendLine(`bitmamba-lsp failed to start: ${String(error)}`);
      void vscode.window.showErrorMessage(
        `bitmamba-lsp could not be started (${command}). Install it with \`pip install bitmamba-lsp\` ` +
          'or set "bitmamba.serverPath".',
      );
      return false;
    },
  };
  return new LanguageClient('bitmamba', 'bitmamba', serverOptions, clientOptions);
}

async function start(): Promise<void> {
  client = createClient();
  client.onDidChangeState((e) => {
    if (e.newState === State.Running) {
      void refreshStatus();
    } else if (e.newState === State.Stopped) {
      showStopped();
    }
  });
  statusItem.text = '$(loading~spin) bitmamba';
  try {
    await client.start();
  } catch (err) {
    output.appendLine(`bitmamba-lsp did not start: ${String(err)}`);
    showStopped();
    return;
  }
  schedulePolling();
}

async function stop(): Promise<void> {
  if (pollTimer) {
    clearInterval(pollTimer);
    pollTimer = undefined;
  }
  const c = client;
  client = undefined;
  if (c) {
    try {
      await c.stop(3000);
    } catch (err) {
      output.appendLine(`stopping bitmamba-lsp: ${String(err)}`);
    }
  }
}

async function restart(): Promise<void> {
  await stop();
  await start();
}

function showStopped(): void {
  statusItem.text = '$(circle-slash) bitmamba';
  statusItem.tooltip = 'bitmamba-lsp is not running. Click for details.';
}

function schedulePolling(): void {
  if (pollTimer) {
    clearInterval(pollTimer);
    pollTimer = undefined;
  }
  const seconds = config().get<number>('statusPollSeconds') ?? 5;
  if (seconds > 0) {
    pollTimer = setInterval(() => void refreshStatus(), seconds * 1000);
  }
}

async function fetchStatus(): Promise<DaemonStatus | undefined> {
  if (!client || !client.isRunning()) {
    return undefined;
  }
  return client.sendRequest<DaemonStatus>(STATUS_REQUEST, null);
}

async function refreshStatus(): Promise<void> {
  try {
    const s = await fetchStatus();
    if (!s) {
      return;
    }
    lastStatus = s;
    statusItem.text = statusBarText(s);
    statusItem.tooltip = statusDetails(s);
  } catch (err) {
    output.appendLine(`bitmamba/status: ${String(err)}`);
  }
}

async function showStatus(): Promise<void> {
  await refreshStatus();
  if (!lastStatus || !client?.isRunning()) {
    const pick = await vscode.window.showWarningMessage('bitmamba-lsp is not running.', 'Restart', 'Show log');
    if (pick === 'Restart') {
      await restart();
    } else if (pick === 'Show log') {
      output.show();
    }
    return;
  }
  output.appendLine(statusDetails(lastStatus));
  output.appendLine(JSON.stringify(lastStatus, null, 2));
  const pick = await vscode.window.showInformationMessage(
    statusDetails(lastStatus).split('\n').join(' · '),
    'Show log',
    'Restart',
  );
  if (pick === 'Show log') {
    output.show();
  } else if (pick === 'Restart') {
    await restart();
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel('bitmamba', { log: true });
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.name = 'bitmamba';
  statusItem.command = 'bitmamba.showStatus';
  statusItem.show();
  context.subscriptions.push(
    output,
    statusItem,
    vscode.commands.registerCommand('bitmamba.restartServer', restart),
    vscode.commands.registerCommand('bitmamba.showStatus', showStatus),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration(SECTION)) {
        return;
      }
      if (
        e.affectsConfiguration(`${SECTION}.serverPath`) ||
        e.affectsConfiguration(`${SECTION}.serverArgs`) ||
        e.affectsConfiguration(`${SECTION}.warmStart`)
      ) {
        await restart();
        return;
      }
      if (e.affectsConfiguration(`${SECTION}.statusPollSeconds`)) {
        schedulePolling();
      }
      if (client?.isRunning()) {
        await client.sendNotification(DidChangeConfigurationNotification.type, {
          settings: currentServerSettings(),
        });
      }
    }),
    { dispose: () => void stop() },
  );
  await start();
}

export async function deactivate(): Promise<void> {
  await stop();
}
