-- bitmamba.nvim: local inline code completion from bitmamba-lsp.
--
--   require('bitmamba').setup({ settings = { maxTokens = 48 } })
--
-- Starts one bitmamba-lsp daemon per Neovim (shared by every buffer), asks it for
-- textDocument/inlineCompletion while you type and shows the answer as ghost text.
-- On Neovim >= 0.12 the built-in vim.lsp.inline_completion does the showing (builtin = 'auto').

local api = vim.api
local config = require('bitmamba.config')
local ghost = require('bitmamba.ghost')

local M = {}

M.name = 'bitmamba'
local did_setup = false
local group = api.nvim_create_augroup('bitmamba', { clear = true })

--- Does this Neovim use the built-in inline completion?
function M.uses_builtin()
  local b = config.options.builtin
  if b == 'auto' then
    return vim.fn.has('nvim-0.12') == 1 and vim.lsp.inline_completion ~= nil
  end
  return b == true and vim.lsp.inline_completion ~= nil
end

local function wanted(bufnr)
  if not api.nvim_buf_is_valid(bufnr) or vim.bo[bufnr].buftype ~= '' then
    return false
  end
  local ft = vim.bo[bufnr].filetype
  if ft == '' or vim.tbl_contains(config.options.exclude_filetypes, ft) then
    return false
  end
  return config.options.filetypes == nil or vim.tbl_contains(config.options.filetypes, ft)
end

---@return vim.lsp.Client|nil
function M.client(bufnr)
  local clients = vim.lsp.get_clients({ name = M.name, bufnr = bufnr })
  return clients[1]
end

--- `t` as a JSON object: an empty Lua table would be encoded as `[]`, which the daemon rejects
--- ("settings must be an object").
local function as_object(t)
  if type(t) ~= 'table' or next(t) == nil then
    return vim.empty_dict()
  end
  return t
end

--- The daemon command: `cmd`, plus `--log-file` (unless `log_file` is false, `cmd` already names
--- one, or `cmd` is a function). Neovim records every line a server writes on stderr as an
--- [ERROR] in its LSP log; the daemon's own log goes to its file instead.
function M.daemon_cmd()
  local opts = config.options
  local cmd = opts.cmd
  if type(cmd) ~= 'table' or not opts.log_file then
    return cmd
  end
  for _, a in ipairs(cmd) do
    if a == '--log-file' or a:match('^%-%-log%-file=') then
      return cmd
    end
  end
  vim.fn.mkdir(vim.fs.dirname(opts.log_file), 'p')
  return vim.list_extend(vim.deepcopy(cmd), { '--log-file', opts.log_file })
end

--- The daemon's environment additions: BITMAMBA_LSP_WARM=1 when `warm` is on (a warm start, see
--- the top-level README; an environment variable, not a flag, so that an older bitmamba-lsp
--- that does not know it still starts) unless the user's environment already says.
function M.daemon_env()
  if config.options.warm and vim.env.BITMAMBA_LSP_WARM == nil then
    return { BITMAMBA_LSP_WARM = '1' }
  end
  return nil
end

--- The daemon's log file, or nil when it logs to stderr (Neovim's LSP log).
function M.log_file()
  local cmd = M.daemon_cmd()
  if type(cmd) ~= 'table' then
    return nil
  end
  for i, a in ipairs(cmd) do
    if a == '--log-file' then
      return cmd[i + 1]
    end
    local v = a:match('^%-%-log%-file=(.*)$')
    if v then
      return v
    end
  end
  return nil
end

--- Start the daemon (if needed) and attach it to `bufnr`.
function M.attach(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if not wanted(bufnr) then
    return nil
  end
  local opts = config.options
  return vim.lsp.start({
    name = M.name,
    cmd = M.daemon_cmd(),
    cmd_env = M.daemon_env(),
    root_dir = vim.fs.root(bufnr, { '.git' }) or vim.fn.getcwd(),
    init_options = as_object(opts.settings),
    -- One daemon for every buffer: the model is loaded once.
    reuse_client = function(client, cfg)
      return client.name == cfg.name
    end,
  }, { bufnr = bufnr })
end

local function on_lsp_attach(args)
  local client = vim.lsp.get_client_by_id(args.data.client_id)
  if not client or client.name ~= M.name then
    return
  end
  if M.uses_builtin() then
    vim.lsp.inline_completion.enable(true, { bufnr = args.buf })
  else
    ghost.attach(args.buf)
    if api.nvim_get_current_buf() == args.buf and api.nvim_get_mode().mode:sub(1, 1) == 'i' then
      ghost.schedule(args.buf)
    end
  end
end

--- Accept the whole suggestion; false when there is none.
function M.accept()
  if M.uses_builtin() then
    return vim.lsp.inline_completion.get() == true
  end
  return ghost.accept('all')
end

function M.accept_word()
  return not M.uses_builtin() and ghost.accept('word')
end

function M.accept_line()
  return not M.uses_builtin() and ghost.accept('line')
end

function M.dismiss()
  ghost.dismiss()
end

function M.trigger()
  if M.uses_builtin() then
    vim.lsp.inline_completion.get() -- with nothing shown, this asks for a suggestion
  else
    ghost.request()
  end
end

--- The suggestion text still to be inserted at the cursor, or nil.
function M.visible()
  return ghost.visible()
end

function M.enable()
  ghost.enabled = true
  if M.uses_builtin() then
    vim.lsp.inline_completion.enable(true)
  end
end

function M.disable()
  ghost.enabled = false
  ghost.dismiss()
  if M.uses_builtin() then
    vim.lsp.inline_completion.enable(false)
  end
end

function M.toggle()
  if ghost.enabled then
    M.disable()
  else
    M.enable()
  end
  vim.notify('bitmamba: ' .. (ghost.enabled and 'enabled' or 'disabled'))
end

--- Change daemon settings at run time (workspace/didChangeConfiguration).
---@param settings table camelCase keys, e.g. { maxTokens = 32, multiline = false }
function M.set_settings(settings)
  config.options.settings = vim.tbl_extend('force', config.options.settings or {}, settings or {})
  for _, client in ipairs(vim.lsp.get_clients({ name = M.name })) do
    client:notify('workspace/didChangeConfiguration', { settings = { bitmamba = as_object(config.options.settings) } })
  end
end

--- Ask the daemon for its status (the `bitmamba/status` request).
---@param cb fun(err: table|nil, status: table|nil)
function M.status(cb)
  local client = M.client() or vim.lsp.get_clients({ name = M.name })[1]
  if not client then
    cb({ message = 'bitmamba-lsp is not running (open a file, or check :checkhealth bitmamba)' }, nil)
    return
  end
  client:request('bitmamba/status', vim.NIL, function(err, result)
    cb(err, result)
  end)
end

local function present(v)
  return v ~= nil and v ~= vim.NIL
end

local function ms(p)
  return type(p) == 'table' and present(p.p50) and string.format('%.1f', p.p50) or '-'
end

--- The model the user asked for (settings.model, or --model in cmd); nil: the default model.
function M.wanted_model()
  local m = (config.options.settings or {}).model
  if present(m) and m ~= '' then
    return tostring(m)
  end
  local cmd = config.options.cmd
  if type(cmd) == 'table' then
    for i, a in ipairs(cmd) do
      if (a == '--model' or a == '-m') and cmd[i + 1] then
        return cmd[i + 1]
      end
      local v = a:match('^%-%-model=(.+)$')
      if v then
        return v
      end
    end
  end
  return nil
end

--- One line for the status (also used by statusline components). Fields the daemon does not know
--- yet (the model's name and threads while it loads) are left out, never printed as nil.
function M.format_status(s)
  local state = present(s.model_state) and tostring(s.model_state) or 'unknown'
  local model = present(s.model) and tostring(s.model) or nil
  local wanted = M.wanted_model() or 'the default model'
  local head
  if state == 'ready' then
    head = (model or wanted) .. ' (ready)'
  elseif state == 'loading' then
    head = 'loading ' .. wanted .. '…'
    if model and model ~= wanted then
      head = head .. ' (' .. model .. ' answers meanwhile)'
    end
  elseif state == 'failed' then
    head = 'the model failed to load (' .. wanted .. ')'
  elseif state == 'not loaded' then
    head = 'starting (' .. wanted .. ' not loaded yet)'
  else
    head = 'model ' .. state
  end
  local parts = { 'bitmamba: ' .. head }
  if present(s.simd) then
    parts[#parts + 1] = tostring(s.simd)
  end
  if present(s.threads) then
    parts[#parts + 1] = tostring(s.threads) .. ' threads'
  end
  parts[#parts + 1] = string.format('%d docs', present(s.documents) and s.documents or 0)
  local shown = present(s.shown) and s.shown or 0
  if state == 'ready' or shown > 0 then
    parts[#parts + 1] = string.format('accepted %d/%d', present(s.accepted) and s.accepted or 0, shown)
    parts[#parts + 1] = string.format('first token p50 %s ms', ms(s.first_token_ms))
    parts[#parts + 1] = string.format('total p50 %s ms', ms(s.total_ms))
  end
  return table.concat(parts, ' · ')
end

local function value_text(v)
  if not present(v) then
    return '-'
  elseif type(v) == 'table' then
    return vim.inspect(v, { newline = ' ', indent = '' })
  end
  return tostring(v)
end

--- Every line of the verbose status: the summary, the model error, each field of the daemon's
--- status, then the plugin's own counters.
function M.status_lines(s)
  local lines = { M.format_status(s) }
  if present(s.model_error) then
    for _, l in ipairs(vim.split('model error: ' .. tostring(s.model_error), '\n', { plain = true })) do
      lines[#lines + 1] = l
    end
  end
  lines[#lines + 1] = ''
  lines[#lines + 1] = 'daemon (bitmamba/status):'
  local keys = vim.tbl_keys(s)
  table.sort(keys)
  for _, k in ipairs(keys) do
    lines[#lines + 1] = string.format('  %-28s %s', k, value_text(s[k]))
  end
  lines[#lines + 1] = ''
  lines[#lines + 1] = 'plugin:'
  local stats = ghost.stats
  local skeys = vim.tbl_keys(stats)
  table.sort(skeys)
  for _, k in ipairs(skeys) do
    lines[#lines + 1] = string.format('  %-28s %s', k, value_text(stats[k]))
  end
  lines[#lines + 1] = string.format('  %-28s %s', 'ghost_text', M.uses_builtin() and 'vim.lsp.inline_completion' or 'bitmamba.nvim')
  lines[#lines + 1] = string.format('  %-28s %s', 'daemon_log', M.log_file() or "stderr (Neovim's LSP log)")
  if ghost.last_error then
    lines[#lines + 1] = string.format('  %-28s %s', 'last_error', value_text(ghost.last_error.message or ghost.last_error))
  end
  return lines
end

M.status_buffer_name = 'bitmamba://status'

--- Show `lines` in a scratch window (reused when it is open; `q` closes it).
local function show_scratch(lines)
  local buf = vim.fn.bufnr(M.status_buffer_name)
  local win = buf > 0 and vim.fn.bufwinid(buf) or -1
  if win == -1 then
    buf = api.nvim_create_buf(false, true)
    api.nvim_buf_set_name(buf, M.status_buffer_name)
    vim.bo[buf].bufhidden = 'wipe'
    vim.bo[buf].filetype = 'bitmamba-status'
    win = api.nvim_open_win(buf, true, {
      split = 'below',
      win = -1,
      height = math.max(3, math.min(#lines, math.floor(vim.o.lines / 2))),
    })
    vim.keymap.set('n', 'q', '<Cmd>close<CR>', { buffer = buf, nowait = true, desc = 'close' })
  else
    api.nvim_set_current_win(win)
  end
  vim.bo[buf].modifiable = true
  api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].modified = false
  api.nvim_win_set_cursor(win, { 1, 0 })
  return buf, win
end

--- :BitmambaStatus (bang: every field, in a scratch window: nothing to page through)
function M.show_status(verbose)
  M.status(function(err, s)
    if err or not s then
      vim.notify('bitmamba: ' .. (err and err.message or 'no status'), vim.log.levels.WARN)
      return
    end
    if verbose then
      show_scratch(M.status_lines(s))
      return
    end
    local chunks = { { M.format_status(s) } }
    if present(s.model_error) then
      chunks[#chunks + 1] = { '\nerror: ' .. tostring(s.model_error), 'ErrorMsg' }
    end
    api.nvim_echo(chunks, true, {})
  end)
end

--- The daemon's status, waiting up to `timeout_ms` (for :checkhealth).
---@return table|nil status, string|nil error
function M.status_sync(timeout_ms)
  local client = M.client() or vim.lsp.get_clients({ name = M.name })[1]
  if not client then
    return nil, 'bitmamba-lsp is not running'
  end
  local resp, err = client:request_sync('bitmamba/status', vim.NIL, timeout_ms or 3000)
  if not resp then
    return nil, 'no answer to bitmamba/status (' .. tostring(err or 'the client has stopped') .. ')'
  end
  if resp.err then
    return nil, 'bitmamba/status failed: ' .. tostring(resp.err.message or resp.err)
  end
  if type(resp.result) ~= 'table' then
    return nil, 'bitmamba/status gave no status'
  end
  return resp.result, nil
end

function M.restart()
  for _, client in ipairs(vim.lsp.get_clients({ name = M.name })) do
    client:stop(true)
  end
  vim.defer_fn(function()
    for _, buf in ipairs(api.nvim_list_bufs()) do
      if api.nvim_buf_is_loaded(buf) then
        M.attach(buf)
      end
    end
  end, 500)
end

-- What a key did before this plugin mapped it (another plugin's mapping, or the key itself):
-- used when there is no suggestion.
local fallbacks = {}

---@return string keys for an expression mapping
function M._fallback(i)
  local prev = fallbacks[i]
  if prev.callback then
    if prev.expr == 1 then
      local keys = prev.callback() -- our own mapping replaces keycodes in what it returns
      return type(keys) == 'string' and keys or ''
    end
    prev.callback()
    return ''
  end
  if prev.expr == 1 then
    return vim.api.nvim_eval(prev.rhs)
  end
  return prev.rhs
end

local function fallback_keys(lhs)
  local prev = vim.fn.maparg(lhs, 'i', false, true)
  if vim.tbl_isempty(prev) or (prev.desc or ''):match('^bitmamba') then
    return function()
      return lhs
    end
  end
  fallbacks[#fallbacks + 1] = prev
  local i = #fallbacks
  if prev.callback and prev.expr ~= 1 then
    -- a Lua mapping that edits the buffer: run it outside the expression (no textlock)
    return function()
      return '<Cmd>lua require("bitmamba")._fallback(' .. i .. ')<CR>'
    end
  end
  return function()
    local keys = M._fallback(i)
    if prev.noremap ~= 1 and keys ~= '' then
      vim.api.nvim_feedkeys(vim.keycode(keys), 'm', false)
      return ''
    end
    return keys
  end
end

local function map(lhs, fn, desc)
  if not lhs then
    return
  end
  local fallback = fallback_keys(lhs)
  vim.keymap.set('i', lhs, function()
    return fn() or fallback()
  end, { expr = true, silent = true, desc = desc, replace_keycodes = true })
end

local function set_keymaps()
  local k = config.options.keymaps
  local builtin = M.uses_builtin()
  -- Expression maps: with a suggestion the key runs the action (<Cmd>, no textlock); without one
  -- it does what it did before (another mapping, or the key itself).
  map(k.accept, function()
    if builtin then
      return vim.lsp.inline_completion.get() and '' or nil
    end
    return ghost.visible() and '<Cmd>lua require("bitmamba").accept()<CR>' or nil
  end, 'bitmamba: accept the suggestion')
  map(k.accept_word, function()
    return not builtin and ghost.visible() and '<Cmd>lua require("bitmamba").accept_word()<CR>' or nil
  end, 'bitmamba: accept the next word')
  map(k.accept_line, function()
    return not builtin and ghost.visible() and '<Cmd>lua require("bitmamba").accept_line()<CR>' or nil
  end, 'bitmamba: accept the next line')
  map(k.dismiss, function()
    return not builtin and ghost.visible() and '<Cmd>lua require("bitmamba").dismiss()<CR>' or nil
  end, 'bitmamba: dismiss the suggestion')
  if k.trigger then
    vim.keymap.set('i', k.trigger, function()
      M.trigger()
    end, { silent = true, desc = 'bitmamba: ask for a suggestion' })
  end
end

---@param opts bitmamba.Config|nil
function M.setup(opts)
  config.set(opts)
  did_setup = true
  api.nvim_set_hl(0, 'BitmambaSuggestion', { link = 'Comment', default = true })
  api.nvim_clear_autocmds({ group = group })
  api.nvim_create_autocmd('LspAttach', { group = group, callback = on_lsp_attach })
  api.nvim_create_autocmd('FileType', {
    group = group,
    callback = function(args)
      M.attach(args.buf)
    end,
  })
  set_keymaps()
  for _, buf in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(buf) then
      M.attach(buf)
    end
  end
end

function M.is_setup()
  return did_setup
end

return M
