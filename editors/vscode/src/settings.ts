// Settings shared by the extension and its tests: no `vscode` import here.

/** Settings forwarded to the daemon (initializationOptions / workspace/didChangeConfiguration),
 *  under the names bitmamba-lsp reads (camelCase). The others (serverPath, serverArgs,
 *  statusPollSeconds, trace.server) belong to the extension. */
export const SERVER_SETTINGS = [
  'model',
  'revision',
  'threads',
  'maxTokens',
  'temperature',
  'topK',
  'topP',
  'minP',
  'multiline',
  'maxLines',
  'debounceMs',
  'timeBudgetMs',
  'checkpointSpacing',
  'denseCheckpoints',
  'memoryBudgetMb',
  'completionFallback',
  'speculative',
  'prefillOnOpen',
  'maxDocumentChars',
  'tokenHealing',
  'cacheModel',
  'cacheOpenFiles',
  'cacheWorkspace',
  'cacheOrder',
  'cacheAlpha',
  'cacheMinOrder',
  'workspaceMaxFiles',
  'workspaceMaxTokens',
  'repeatStart',
  'repeatEnd',
  'repeatCount',
  'lora',
  'fim',
  'fimSuffixLines',
  'fimSuffixTokens',
  'contextChunks',
  'draftTokens',
  'suffixSafety',
  'lineBranches',
  'lineCandidates',
  'leadCandidates',
  'minConfidence',
  'minConfidenceLineStart',
  'minLineConfidence',
] as const;

export type ServerSettingName = (typeof SERVER_SETTINGS)[number];
export type ServerSettings = Partial<Record<ServerSettingName, string | number | boolean>>;

/** Build the daemon's settings object from a `get(key)` lookup (VS Code's WorkspaceConfiguration).
 *  Empty strings and unset values are left out, so the daemon keeps its defaults. */
export function serverSettings(get: (key: string) => unknown): ServerSettings {
  const out: ServerSettings = {};
  for (const key of SERVER_SETTINGS) {
    const value = get(key);
    if (value === undefined || value === null || value === '') {
      continue;
    }
    if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') {
      out[key] = value;
    }
  }
  return out;
}

export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
}

/** The part of the `bitmamba/status` answer the extension shows. */
export interface DaemonStatus {
  version: string;
  model: string | null;
  model_state: string;
  model_error: string | null;
  simd: string;
  threads: number | null;
  documents: number;
  shown: number;
  accepted: number;
  accept_rate: number | null;
  first_token_ms: Percentiles | null;
  total_ms: Percentiles | null;
  state_memory_bytes: number;
  [key: string]: unknown;
}

/** Status bar text: model and median latency. */
export function statusBarText(s: DaemonStatus): string {
  if (s.model_state === 'failed') {
    return '$(error) bitmamba';
  }
  if (s.model_state !== 'ready') {
    return `$(loading~spin) bitmamba: ${s.model_state}`;
  }
  const latency = s.total_ms ? ` · ${formatMs(s.total_ms.p50)}` : '';
  return `$(sparkle) ${s.model ?? 'bitmamba'}${latency}`;
}

/** Multi-line description (status bar tooltip, the showStatus command). */
export function statusDetails(s: DaemonStatus): string {
  const lines = [
    `bitmamba-lsp ${s.version}: model ${s.model ?? '-'} (${s.model_state})`,
    `SIMD ${s.simd}, ${s.threads ?? '-'} threads, ${s.documents} documents, ` +
      `${(s.state_memory_bytes / 1048576).toFixed(1)} MB of states`,
    `suggestions shown ${s.shown}, accepted ${s.accepted}` +
      (s.accept_rate !== null ? ` (${(100 * s.accept_rate).toFixed(0)}%)` : ''),
  ];
  if (s.first_token_ms && s.total_ms) {
    lines.push(
      `first token p50 ${formatMs(s.first_token_ms.p50)}, total p50 ${formatMs(s.total_ms.p50)} ` +
        `p90 ${formatMs(s.total_ms.p90)}`,
    );
  }
  if (s.model_error) {
    lines.push(`error: ${s.model_error}`);
  }
  return lines.join('\n');
}

export function formatMs(ms: number): string {
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}
