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

--- Start the daemon (if needed) and attach it to `bufnr`.
function M.attach(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if not wanted(bufnr) then
    return nil
  end
  local opts = config.options
  return vim.lsp.start({
    name = M.name,
    cmd = opts.cmd,
    root_dir = vim.fs.root(bufnr, { '.git' }) or vim.fn.getcwd(),
    init_options = opts.settings,
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
  config.options.settings = vim.tbl_extend('force', config.options.settings or {}, settings)
  for _, client in ipairs(vim.lsp.get_clients({ name = M.name })) do
    client:notify('workspace/didChangeConfiguration', { settings = { bitmamba = config.options.settings } })
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

local function ms(p)
  return type(p) == 'table' and string.format('%.1f', p.p50) or '-'
end

--- One line for the status (also used by statusline components).
function M.format_status(s)
  return string.format(
    'bitmamba: %s (%s) · %s · %s threads · %d docs · accepted %d/%d · first token p50 %s ms · total p50 %s ms',
    tostring(s.model),
    tostring(s.model_state),
    tostring(s.simd),
    tostring(s.threads),
    s.documents or 0,
    s.accepted or 0,
    s.shown or 0,
    ms(s.first_token_ms),
    ms(s.total_ms)
  )
end

--- :BitmambaStatus (bang: every field)
function M.show_status(verbose)
  M.status(function(err, s)
    if err or not s then
      vim.notify('bitmamba: ' .. (err and err.message or 'no status'), vim.log.levels.WARN)
      return
    end
    local chunks = { { M.format_status(s) } }
    if s.model_error ~= vim.NIL and s.model_error then
      chunks[#chunks + 1] = { '\nerror: ' .. s.model_error, 'ErrorMsg' }
    end
    if verbose then
      chunks[#chunks + 1] = { '\n' .. vim.inspect(s) }
    end
    api.nvim_echo(chunks, true, {})
  end)
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
