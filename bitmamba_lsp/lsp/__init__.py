"""The completion daemon (the product): an LSP server over the engine.

    server.py       the lifecycle and one handler per LSP method, a few lines each
    jsonrpc.py      JSON-RPC 2.0: dispatch, responses and errors, cancellation, requests to the client
    messages.py     the LSP structures read and written, as plain JSON;  framing.py: reading the stream
    session.py      documents, the model's lifecycle (model_slot.py), request ordering, pending
                    suggestions (pending.py) and speculation, stats (stats.py): no LSP types
    documents.py    text, line index, tokens; apply_changes -> what changed
    prompt.py       what the model reads for a request: ordered segments with their checkpoints
    worker.py       the one thread that owns the model: priorities, background prefill
    suggest.py      one suggestion: heal -> restore and feed -> decode -> stop rules
    statecache.py   the checkpoints of every document under a memory budget
    completion.py   the cursor's context, stop rules and post-processing
    settings.py     the daemon's settings;  cli.py: `bitmamba lsp`

Nothing outside this package imports it except the top-level tools (cli, demo, evaluation,
benchmarks and tests).
"""
