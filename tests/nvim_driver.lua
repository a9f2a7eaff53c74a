-- Drives bitmamba.nvim inside a headless Neovim (tests/test_editors_neovim.py runs it):
--   nvim --headless --clean --cmd 'set rtp^=editors/neovim' -c 'luafile tests/nvim_driver.lua'
-- Keys go through nvim_input, i.e. the same input path as a user's typing, and the script yields to
-- Neovim's main loop between steps (a coroutine resumed by timers) so insert mode, autocommands and
-- the LSP client run for real. Everything observed is written as JSON to $BITMAMBA_TEST_OUT.

local api = vim.api
local out_path = assert(os.getenv('BITMAMBA_TEST_OUT'), 'BITMAMBA_TEST_OUT is not set')
local server_cmd = vim.json.decode(assert(os.getenv('BITMAMBA_TEST_CMD')))
local workdir = assert(os.getenv('BITMAMBA_TEST_DIR'))
local only = os.getenv('BITMAMBA_TEST_ONLY') -- run one scenario (debugging)

local results = { scenarios = {}, events = {}, errors = {} }
local co

local function finish()
  local f = assert(io.open(out_path, 'w'))
  f:write(vim.json.encode(results))
  f:close()
  vim.cmd('qa!')
end

-- a watchdog: never hang the test run
vim.defer_fn(function()
  table.insert(results.errors, 'watchdog: the driver did not finish in time')
  finish()
end, tonumber(os.getenv('BITMAMBA_TEST_TIMEOUT_MS') or '90000'))

local function sleep(ms)
  vim.defer_fn(function()
    local ok, err = coroutine.resume(co)
    if not ok then
      table.insert(results.errors, tostring(err))
      finish()
    end
  end, ms)
  coroutine.yield()
end

local function wait_until(cond, timeout_ms, what)
  local waited = 0
  while not cond() do
    if waited >= timeout_ms then
      error('timed out waiting for ' .. what, 2)
    end
    sleep(10)
    waited = waited + 10
  end
  return waited
end

local function keys(s)
  api.nvim_input(s)
  sleep(15)
end

--- type text one character at a time, as a user would
local function type_text(s, gap_ms)
  for ch in s:gmatch('.') do
    api.nvim_input(ch == '<' and '<lt>' or ch)
    sleep(gap_ms or 15)
  end
end

local bitmamba, ghost

local function buffer_text(bufnr)
  return table.concat(api.nvim_buf_get_lines(bufnr or 0, 0, -1, false), '\n') .. '\n'
end

local function marks()
  local list = {}
  for _, m in ipairs(api.nvim_buf_get_extmarks(0, ghost.ns, 0, -1, { details = true })) do
    local d = m[4]
    local vl = {}
    for _, l in ipairs(d.virt_lines or {}) do
      vl[#vl + 1] = l[1] and l[1][1] or ''
    end
    list[#list + 1] = {
      row = m[2],
      col = m[3],
      virt_text = d.virt_text and d.virt_text[1][1] or nil,
      virt_text_pos = d.virt_text_pos,
      virt_lines = vl,
    }
  end
  return list
end

local function screen(rows)
  vim.cmd('redraw')
  local lines = {}
  for r = 1, rows do
    local cells = {}
    for c = 1, vim.o.columns do
      cells[#cells + 1] = vim.fn.screenstring(r, c)
    end
    lines[#lines + 1] = (table.concat(cells):gsub('%s+$', ''))
  end
  return lines
end

local function cursor()
  local p = api.nvim_win_get_cursor(0)
  return { p[1] - 1, p[2] }
end

local function item_copy()
  local it = ghost.last_item
  if not it then
    return nil
  end
  return {
    row = it.row,
    col = it.col,
    text = it.text,
    tail = it.tail,
    has_command = it.command ~= nil,
    request = it.request,
  }
end

local function snapshot()
  return {
    text = buffer_text(),
    cursor = cursor(),
    mode = api.nvim_get_mode().mode,
    visible = ghost.visible(),
    marks = marks(),
    item = item_copy(),
    requests = ghost.stats.requests,
  }
end

local function status_sync()
  local got
  bitmamba.status(function(err, s)
    got = { err = err, status = s }
  end)
  wait_until(function()
    return got ~= nil
  end, 5000, 'bitmamba/status')
  return got.status
end

--- open a fresh python buffer holding `lines`
local function python_buffer(name, lines)
  keys('<Esc>')
  vim.cmd('edit ' .. vim.fn.fnameescape(workdir .. '/' .. name))
  vim.bo.indentexpr = '' -- keep typed indentation exactly as typed
  vim.bo.autoindent = true
  if lines then
    api.nvim_buf_set_lines(0, 0, -1, false, lines)
    api.nvim_win_set_cursor(0, { #lines, 0 }) -- `A` appends to the last line
  end
  wait_until(function()
    return ghost.client(0) ~= nil and vim.b.bitmamba_ghost
  end, 20000, 'the client to attach')
end

local function wait_ghost(what)
  wait_until(function()
    return ghost.visible() ~= nil
  end, 15000, what or 'ghost text')
end

-- ------------------------------------------------------------------ scenarios
local scenarios = {}

-- type a prefix, wait for the ghost text, accept it with <Tab>
function scenarios.accept()
  python_buffer('accept.py')
  keys('i')
  type_text('import os\n\n\nclass Point:\n    def __init__(self')
  local s = {}
  wait_ghost()
  s.before = snapshot()
  s.screen = screen(8)
  keys('<Tab>')
  wait_until(function()
    return buffer_text() ~= s.before.text
  end, 5000, 'the accepted text')
  s.after = snapshot()
  wait_until(function()
    local st = status_sync()
    return st and st.accepted >= 1
  end, 5000, 'the accept command to reach the server')
  s.status = status_sync()
  return s
end

-- type the character the ghost shows: it stays (trimmed) with no new request; then accept;
-- then, on a new line, type a character the suggestion there does not show: it disappears
function scenarios.typeover()
  python_buffer('typeover.py', { 'import os', '', '', 'class Config:', '    def __init__(self, path):', '        ' })
  keys('A')
  wait_ghost()
  local s = { shown = snapshot() }
  local first = s.shown.visible:sub(1, 1)
  type_text(first)
  sleep(150) -- longer than the debounce: a request would have gone out
  s.typed = snapshot()
  keys('<Tab>')
  wait_until(function()
    return ghost.visible() == nil
  end, 3000, 'accept')
  s.accepted = snapshot()
  -- a new line (autoindented) and its suggestion, then a character it does not show
  keys('<CR>')
  wait_ghost('the next suggestion')
  s.next = snapshot()
  local wrong = s.next.visible:sub(1, 1) == '#' and '@' or '#'
  require('bitmamba.config').options.auto_trigger = false -- no new suggestion after it
  api.nvim_input(wrong)
  wait_until(function()
    return buffer_text() ~= s.next.text
  end, 3000, 'the typed character')
  s.wrong_char = wrong
  s.after_wrong = snapshot()
  require('bitmamba.config').options.auto_trigger = true
  return s
end

-- <Esc>, <C-]> and cursor moves dismiss; <Tab> without a suggestion is a normal Tab
function scenarios.dismiss()
  python_buffer('dismiss.py', { 'def greet(name):', '    message = "Hello, " + name', '    print(' })
  keys('A')
  wait_ghost()
  local s = { shown = snapshot() }
  keys('<Esc>')
  s.after_esc = snapshot()
  keys('A')
  wait_ghost('the ghost after re-entering insert mode')
  s.shown_again = snapshot()
  keys('<C-]>')
  s.after_ctrl_bracket = snapshot()
  require('bitmamba.config').options.auto_trigger = false -- nothing new after the move
  ghost.request()
  wait_ghost('the ghost after a manual trigger')
  s.shown_third = snapshot()
  keys('<Left>')
  s.after_left = snapshot()
  keys('<Tab>')
  s.after_tab = snapshot()
  -- <M-Right> had a mapping before setup(): without a suggestion, that mapping still runs
  keys('<M-Right>')
  s.after_word_key = snapshot()
  require('bitmamba.config').options.auto_trigger = true
  return s
end

-- accept word, accept line, then the rest; multi-line ghost text as virtual lines
function scenarios.partial()
  python_buffer('partial.py', { 'import sys', '', '', 'def main(argv):', '    ' })
  keys('A')
  wait_ghost()
  local s = { shown = snapshot(), screen = screen(16) }
  keys('<M-Right>')
  s.word = snapshot()
  keys('<M-C-Right>')
  s.line = snapshot()
  keys('<Tab>')
  s.all = snapshot()
  return s
end

-- a keystroke while a request is in flight sends $/cancelRequest for it
function scenarios.cancel()
  local cancelled = {}
  api.nvim_create_autocmd('LspRequest', {
    callback = function(a)
      local r = a.data.request
      if r and r.method == 'textDocument/inlineCompletion' and r.type == 'cancel' then
        cancelled[#cancelled + 1] = a.data.request_id
      end
    end,
  })
  python_buffer('cancel.py', { 'import sys', '', 'def main(argv):', '    args = argv[1:]' })
  bitmamba.set_settings({ debounceMs = 600 }) -- the daemon now sits on each request for 600 ms
  sleep(50)
  keys('A')
  sleep(150) -- the plugin's 20 ms debounce has passed: a request is in flight
  local s = { in_flight = snapshot(), cancelled_before = #cancelled, stats_before = vim.deepcopy(ghost.stats) }
  type_text('\nfor') -- autoindent puts it under `args` (4 spaces)
  wait_ghost()
  s.shown = snapshot()
  s.cancelled = cancelled
  s.stats = vim.deepcopy(ghost.stats)
  bitmamba.set_settings({ debounceMs = 0 })
  return s
end

function scenarios.status()
  vim.cmd('BitmambaStatus')
  wait_until(function()
    return vim.fn.execute('messages'):find('bitmamba: ', 1, true) ~= nil
  end, 5000, ':BitmambaStatus output')
  return { messages = vim.fn.execute('messages'), status = status_sync() }
end

-- Every inlineCompletion request's life as Neovim saw it (LspRequest: pending / cancel / complete).
local lives = {}
api.nvim_create_autocmd('LspRequest', {
  callback = function(a)
    local r = a.data.request
    if r and r.method == 'textDocument/inlineCompletion' then
      local l = lives[a.data.request_id] or {}
      l[#l + 1] = r.type
      lives[a.data.request_id] = l
    end
  end,
})

--- the requests cancelled after Neovim had their answer (there should be none)
local function cancelled_after_answer(ids)
  local bad = {}
  for _, id in ipairs(ids) do
    local l = lives[id] or {}
    local done = false
    for _, t in ipairs(l) do
      if t == 'complete' then
        done = true
      elseif t == 'cancel' and done then
        bad[#bad + 1] = id
      end
    end
  end
  return bad
end

local function read_file(path, from)
  local f = path and io.open(path, 'r')
  if not f then
    return ''
  end
  if from and from > 0 then
    f:seek('set', from)
  end
  local text = f:read('*a')
  f:close()
  return text
end

local function file_size(path)
  local st = path and vim.uv.fs_stat(path)
  return st and st.size or 0
end

local function request_ids_since(first)
  local ids = {}
  for id in pairs(lives) do
    if id >= first then
      ids[#ids + 1] = id
    end
  end
  table.sort(ids)
  return ids
end

local function max_request_id()
  local m = 0
  for id in pairs(lives) do
    m = math.max(m, id)
  end
  return m
end

-- a ghost that would run into the code after the cursor (issue 15: `else 0if ...`): with the
-- suffix-safety rules off the daemon offers mid-line text that does not lead back to the rest of
-- the line; the plugin must not show (nor insert) it. Then, with the rules on, whatever is
-- shown at that place must not glue when accepted.
function scenarios.glue()
  python_buffer('glue.py', { 'def pick(value, flag):', '    x = 1 if flag else if value else 2' })
  bitmamba.set_settings({ suffixSafety = false })
  sleep(50)
  local col = #'    x = 1 if flag else '
  api.nvim_win_set_cursor(0, { 2, col })
  local before = vim.deepcopy(ghost.stats)
  keys('i') -- insert before `if value else 2`
  wait_until(function()
    return ghost.stats.responses > before.responses
  end, 15000, 'the answer at the mid-line cursor')
  sleep(100)
  local s = { unsafe = snapshot(), rejected = ghost.last_rejected, stats_before = before }
  require('bitmamba.config').options.auto_trigger = false
  keys('<Tab>') -- nothing shown: a plain Tab
  s.after_tab = snapshot()
  keys('<Esc>')
  require('bitmamba.config').options.auto_trigger = true
  -- the daemon's own rules (suffixSafety on): ask again at the same place
  bitmamba.set_settings({ suffixSafety = true })
  sleep(50)
  api.nvim_buf_set_lines(0, 1, 2, false, { '    x = 1 if flag else if value else 2' })
  api.nvim_win_set_cursor(0, { 2, col })
  local n = ghost.stats.responses
  keys('i')
  wait_until(function()
    return ghost.stats.responses > n
  end, 15000, 'the answer with suffixSafety on')
  sleep(50)
  s.safe = snapshot()
  if s.safe.visible then
    keys('<Tab>')
  end
  s.safe_after = snapshot()
  s.stats = vim.deepcopy(ghost.stats)
  return s
end

-- the glue rule on its own: {line, cursor column, end column, text}
function scenarios.glue_rule()
  local cases = {
    { '    x = 1 if flag else if value else 2', 23, 23, '0 ' },
    { '    x = 1 if flag else if value else 2', 23, 23, '0' },
    { '    x = get(Value)', 11, 11, 'Default' },
    { 'x = getValue()', 7, 7, 'Default' },
    { 'call()', 5, 6, 'a, b)' },
    { 'call(x)', 5, 5, 'a, ' },
    { 'f(x)', 2, 2, 'y)\nz = g(' },
    { 'f(x)', 2, 2, 'y\nz' },
    { 'end', 0, 0, '' },
  }
  local out = {}
  for i, c in ipairs(cases) do
    out[i] = ghost.glues(c[1], c[2], c[3], c[4])
  end
  return { glues = out }
end

-- a request answered while the user types on: the answer has been read (its handlers wait in
-- Neovim's event queue) when the keystroke supersedes the request. Cancelling it then would send
-- $/cancelRequest for a request the daemon has finished ("Cancel notification for unknown message
-- id" in its log): the plugin must not.
function scenarios.late_cancel()
  python_buffer('late.py', { 'import os', '', '', 'def size(path):', '    return os.path.' })
  keys('A')
  wait_ghost()
  require('bitmamba.config').options.auto_trigger = false
  local log_file = bitmamba.log_file()
  local log0 = file_size(log_file)
  local before = vim.deepcopy(ghost.stats)
  local first = max_request_id() + 1
  ghost.request()
  -- let the daemon answer; only fast events run, so the reply is read but not handled yet
  vim.wait(600, function()
    return false
  end, 5, true)
  local pending_before = vim.deepcopy(lives[first] or {})
  ghost.schedule(0) -- what a keystroke does: supersede the request in flight
  sleep(300)
  require('bitmamba.config').options.auto_trigger = true
  local ids = request_ids_since(first)
  local l = {}
  for _, id in ipairs(ids) do
    l[#l + 1] = { id = id, events = lives[id] }
  end
  return {
    lives = l,
    seen_before_keystroke = pending_before,
    cancelled_after_answer = cancelled_after_answer(ids),
    stats_before = before,
    stats = vim.deepcopy(ghost.stats),
    daemon_log = read_file(log_file, log0),
  }
end

-- a typing session: N keystrokes at uneven speed, the daemon's own debounce on (requests are
-- cancelled while it waits, others answered while the next key arrives); what the LSP log gained
local function typing_session(n_lines)
  local log_path = vim.lsp.get_log_path()
  local size0 = file_size(log_path)
  local log_file = bitmamba.log_file()
  local dlog0 = file_size(log_file)
  local first = max_request_id() + 1
  python_buffer('session.py', { 'import json', '', '', 'def load(path):', '    with open(path) as f:', '        ' })
  bitmamba.set_settings({ debounceMs = 30 })
  sleep(50)
  keys('A')
  local gaps = { 5, 40, 90, 15, 120, 25, 60, 8, 200, 35, 30, 45 }
  local text = ('data = json.load(f)\n        return {k: v for k, v in data.items() if v}\n'):rep(n_lines or 1)
  local n = 0
  for ch in text:gmatch('.') do
    n = n + 1
    api.nvim_input(ch == '<' and '<lt>' or (ch == '\n' and '<CR>' or ch))
    sleep(gaps[(n % #gaps) + 1])
  end
  sleep(400)
  keys('<Esc>')
  sleep(200)
  bitmamba.set_settings({ debounceMs = 0 })
  local ids = request_ids_since(first)
  local counts = { pending = 0, cancel = 0, complete = 0 }
  for _, id in ipairs(ids) do
    for _, t in ipairs(lives[id]) do
      counts[t] = (counts[t] or 0) + 1
    end
  end
  return {
    keystrokes = n,
    requests = #ids,
    events = counts,
    cancelled_after_answer = cancelled_after_answer(ids),
    lsp_log = read_file(log_path, size0),
    daemon_log = read_file(log_file, dlog0),
    stats = vim.deepcopy(ghost.stats),
    t_end = vim.uv.hrtime() / 1e6,
    wall_end = vim.uv.gettimeofday(),
  }
end

function scenarios.session()
  return typing_session(1)
end

-- :BitmambaStatus! shows every field in a scratch window instead of echoing them
function scenarios.status_verbose()
  keys('<Esc>')
  local msgs = vim.fn.execute('messages')
  local wins = #api.nvim_list_wins()
  vim.cmd('BitmambaStatus!')
  wait_until(function()
    return vim.fn.bufnr(bitmamba.status_buffer_name) > 0
  end, 5000, 'the status window')
  local buf = vim.fn.bufnr(bitmamba.status_buffer_name)
  local s = {
    lines = api.nvim_buf_get_lines(buf, 0, -1, false),
    in_window = vim.fn.bufwinid(buf) ~= -1,
    windows_added = #api.nvim_list_wins() - wins,
    mode = api.nvim_get_mode().mode,
    messages_added = vim.fn.execute('messages'):sub(#msgs + 1),
    buftype = vim.bo[buf].buftype,
  }
  vim.cmd('BitmambaStatus!') -- again: the same window is reused
  sleep(200)
  s.windows_after_second = #api.nvim_list_wins() - wins
  api.nvim_set_current_win(vim.fn.bufwinid(buf))
  keys('q')
  s.closed = vim.fn.bufnr(bitmamba.status_buffer_name) == -1 or vim.fn.bufwinid(buf) == -1
  return s
end

local function checkhealth()
  keys('<Esc>')
  local tab = api.nvim_get_current_tabpage()
  vim.cmd('checkhealth bitmamba')
  local lines = api.nvim_buf_get_lines(0, 0, -1, false)
  if api.nvim_get_current_tabpage() ~= tab then
    vim.cmd('tabclose')
  else
    vim.cmd('bwipeout!')
  end
  return lines
end

function scenarios.health()
  return { lines = checkhealth() }
end

local function status_message()
  local before = vim.fn.execute('messages')
  vim.cmd('BitmambaStatus')
  wait_until(function()
    return vim.fn.execute('messages'):find('bitmamba: ', #before + 1, true) ~= nil
  end, 5000, ':BitmambaStatus output')
  return vim.fn.execute('messages'):sub(#before + 1)
end

-- (BITMAMBA_TEST_MODE=defaults) setup() with the default settings ({}), against a daemon whose
-- model load waits for $BITMAMBA_TEST_GATE and then fails with the message written there
function scenarios.defaults()
  local s = {}
  python_buffer('defaults.py', { 'import os' })
  local gate = assert(os.getenv('BITMAMBA_TEST_GATE'))
  wait_until(function()
    local st = status_sync()
    return st and st.model_state == 'loading'
  end, 10000, 'the model load to start')
  s.loading = status_sync()
  s.loading_message = status_message()
  vim.cmd('BitmambaStatus!')
  wait_until(function()
    return vim.fn.bufnr(bitmamba.status_buffer_name) > 0
  end, 5000, 'the status window')
  s.loading_verbose = api.nvim_buf_get_lines(vim.fn.bufnr(bitmamba.status_buffer_name), 0, -1, false)
  vim.cmd('bwipeout! ' .. vim.fn.bufnr(bitmamba.status_buffer_name))
  s.loading_health = checkhealth()
  bitmamba.set_settings({}) -- workspace/didChangeConfiguration with the (empty) settings
  sleep(200)
  local f = assert(io.open(gate, 'w'))
  f:write("model 'missing-model.bin' not found (test gate)")
  f:close()
  wait_until(function()
    local st = status_sync()
    return st and st.model_state == 'failed'
  end, 10000, 'the model load to fail')
  s.failed = status_sync()
  s.failed_message = status_message()
  s.failed_health = checkhealth()
  sleep(100)
  s.daemon_log = read_file(bitmamba.log_file())
  s.log_file = bitmamba.log_file()
  s.cmd = bitmamba.daemon_cmd()
  return s
end

local mode = os.getenv('BITMAMBA_TEST_MODE') or 'main'
local order = mode == 'defaults' and { 'defaults' }
  or { 'accept', 'typeover', 'dismiss', 'partial', 'cancel', 'glue', 'glue_rule', 'late_cancel', 'session', 'status', 'status_verbose', 'health' }

-- what the daemon told the user (window/logMessage, window/showMessage)
results.server_messages = {}
for _, method in ipairs({ 'window/logMessage', 'window/showMessage' }) do
  local orig = vim.lsp.handlers[method]
  vim.lsp.handlers[method] = function(err, params, ctx)
    table.insert(results.server_messages, { method = method, type = params.type, message = params.message })
    return orig(err, params, ctx)
  end
end

co = coroutine.create(function()
  bitmamba = require('bitmamba')
  ghost = require('bitmamba.ghost')
  -- a mapping another plugin made before ours (chained to when there is no suggestion)
  vim.keymap.set('i', '<M-Right>', function()
    return '<lt>word>'
  end, { expr = true })
  if mode == 'defaults' then
    bitmamba.setup({ cmd = server_cmd, debounce_ms = 20, builtin = false }) -- settings: the default {}
  else
    bitmamba.setup({
      cmd = server_cmd,
      debounce_ms = 20,
      builtin = false,
      -- cacheOpenFiles off: the test's reference daemon sees one document at a time
      settings = { debounceMs = 0, maxTokens = 48, cacheOpenFiles = false, minConfidence = 0 },
    })
  end
  results.uses_builtin = bitmamba.uses_builtin()
  results.nvim = tostring(vim.version())
  vim.o.columns = 100
  vim.o.lines = 30
  for _, name in ipairs(order) do
    if not only or only == name then
      local t0 = vim.uv.hrtime()
      local ok, res = pcall(scenarios[name])
      if ok then
        res.ms = (vim.uv.hrtime() - t0) / 1e6
        results.scenarios[name] = res
      else
        results.scenarios[name] = { error = tostring(res) }
        table.insert(results.errors, name .. ': ' .. tostring(res))
      end
    end
  end
  local client = ghost.client(0)
  results.offset_encoding = client and client.offset_encoding or nil
  results.stats = ghost.stats
  results.lsp_log_path = vim.lsp.get_log_path()
  results.log_file = bitmamba.log_file()
  finish()
end)

local ok, err = coroutine.resume(co)
if not ok then
  table.insert(results.errors, tostring(err))
  finish()
end
