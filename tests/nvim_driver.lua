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
-- then type a character it does not show: it disappears
function scenarios.typeover()
  python_buffer('typeover.py', { 'def add(a, b):', '    total = a + b', '    return' })
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
  -- the next suggestion (after accepting), then a character it does not show
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
  python_buffer('partial.py', { 'import os', '', '', 'def read_file(path):', '    ' })
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
  type_text('\n    for')
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

local order = { 'accept', 'typeover', 'dismiss', 'partial', 'cancel', 'status' }

co = coroutine.create(function()
  bitmamba = require('bitmamba')
  ghost = require('bitmamba.ghost')
  -- a mapping another plugin made before ours (chained to when there is no suggestion)
  vim.keymap.set('i', '<M-Right>', function()
    return '<lt>word>'
  end, { expr = true })
  bitmamba.setup({
    cmd = server_cmd,
    debounce_ms = 20,
    builtin = false,
    -- cacheOpenFiles off: the test's reference daemon sees one document at a time
    settings = { debounceMs = 0, maxTokens = 48, cacheOpenFiles = false, minConfidence = 0 },
  })
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
  finish()
end)

local ok, err = coroutine.resume(co)
if not ok then
  table.insert(results.errors, tostring(err))
  finish()
end
