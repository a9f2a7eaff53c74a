-- Ghost text for textDocument/inlineCompletion on Neovim < 0.12 (or with builtin = false).
--
-- One suggestion per buffer. It is anchored at `col` (byte column where the item's range starts)
-- on row `row`; `tail` is the text after the cursor that the item replaces (closing punctuation).
-- While the user types characters the suggestion shows, it stays visible and is trimmed; any other
-- edit or cursor move dismisses it. Requests are debounced, and a newer keystroke cancels the
-- request in flight ($/cancelRequest).

local api = vim.api
local config = require('bitmamba.config')

local M = {}

M.ns = api.nvim_create_namespace('bitmamba.ghost')
M.client_name = 'bitmamba'

---@class bitmamba.Item
---@field client_id integer
---@field row integer        0-based row
---@field col integer        0-based byte column where insert_text starts
---@field text string        the item's insertText
---@field tail string        buffer text after the request position that the item replaces
---@field command table|nil  LSP command run after the item is accepted
---@field request table      what was asked: {row, col, character, lines, changedtick}

---@class bitmamba.BufState
---@field item bitmamba.Item|nil
---@field extmark integer|nil
---@field timer uv.uv_timer_t|nil
---@field req_id integer|nil
---@field req_client integer|nil
---@field tick integer        b:changedtick when the suggestion was last checked

---@type table<integer, bitmamba.BufState>
local bufs = {}

-- Counters (tests and :BitmambaStatus read them).
M.stats = {
  requests = 0,
  responses = 0,
  shown = 0,
  cancelled = 0,
  answered_before_cancel = 0, -- superseded after its answer arrived: no $/cancelRequest sent
  stale = 0,
  glued = 0, -- not shown: it would run into the code after the cursor
  errors = 0,
  accepted = 0,
  partial = 0,
}
---@type table|nil the daemon's last error answer to a suggestion request (:checkhealth shows it)
M.last_error = nil
M.enabled = true
---@type bitmamba.Item|nil the last item received from the server (kept after accept, for inspection)
M.last_item = nil

--- nil or 0: the current buffer
local function resolve(bufnr)
  if not bufnr or bufnr == 0 then
    return api.nvim_get_current_buf()
  end
  return bufnr
end

local function state(bufnr)
  local st = bufs[bufnr]
  if not st then
    st = { tick = -1 }
    bufs[bufnr] = st
  end
  return st
end

function M.client(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr, name = M.client_name })[1]
end

local function in_insert()
  local m = api.nvim_get_mode().mode
  return m:sub(1, 1) == 'i' or m:sub(1, 1) == 'R'
end

local function cursor()
  local pos = api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

local function line_at(bufnr, row)
  return api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
end

--- byte column of an LSP character offset in `line`
local function to_byte(line, character, encoding)
  if encoding == 'utf-8' then
    return math.min(character, #line)
  end
  local ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  return ok and col or #line
end

--- What is left of the suggestion at the cursor, or nil when the buffer no longer agrees with it.
--- The text between the item's start and the cursor (possibly over several lines, after typing
--- <CR> or accepting a line) must be a prefix of the item, and the replaced tail must still follow.
---@param bufnr integer
---@param item bitmamba.Item
---@return string|nil remaining, integer|nil row, integer|nil col
local function remaining(bufnr, item)
  local row, col = cursor()
  if row < item.row or (row == item.row and col < item.col) or row - item.row > 200 then
    return nil
  end
  local ok, parts = pcall(api.nvim_buf_get_text, bufnr, item.row, item.col, row, col, {})
  if not ok then
    return nil
  end
  local typed = table.concat(parts, '\n')
  if item.text:sub(1, #typed) ~= typed then
    return nil
  end
  if line_at(bufnr, row):sub(col + 1, col + #item.tail) ~= item.tail then
    return nil
  end
  local rest = item.text:sub(#typed + 1)
  if rest == '' then
    return nil
  end
  return rest, row, col
end

local function display(s)
  if s:find('\t', 1, true) then
    s = s:gsub('\t', string.rep(' ', vim.bo.tabstop))
  end
  return s
end

local function clear_mark(bufnr, st)
  if st.extmark then
    pcall(api.nvim_buf_del_extmark, bufnr, M.ns, st.extmark)
    st.extmark = nil
  end
end

local function render(bufnr, st, rest, row, col)
  clear_mark(bufnr, st)
  local hl = config.options.hl_group
  local lines = vim.split(rest, '\n', { plain = true })
  local opts = {
    virt_text = { { display(lines[1]), hl } },
    -- 'inline' pushes the rest of the line to the right; when the item replaces the closing
    -- punctuation after the cursor, the ghost is drawn over it instead.
    virt_text_pos = st.item.tail ~= '' and 'overlay' or 'inline',
    hl_mode = 'combine',
    priority = 65534,
  }
  if #lines > 1 then
    local vl = {}
    for i = 2, #lines do
      vl[#vl + 1] = { { display(lines[i]), hl } }
    end
    opts.virt_lines = vl
  end
  st.extmark = api.nvim_buf_set_extmark(bufnr, M.ns, row, col, opts)
end

--- The suggestion text still to be inserted at the cursor (nil when none is shown).
function M.visible(bufnr)
  bufnr = resolve(bufnr)
  local st = bufs[bufnr]
  if not st or not st.item or not st.extmark then
    return nil
  end
  return (remaining(bufnr, st.item))
end

function M.dismiss(bufnr)
  bufnr = resolve(bufnr)
  local st = bufs[bufnr]
  if not st then
    return
  end
  st.item = nil
  clear_mark(bufnr, st)
end

--- Would `text`, inserted at the cursor (byte column `col` of `line`) in place of the columns up to
--- `end_col`, run into the code after it? It does when it ends in a word character right before a
--- word character (`else 0` before `if value` reads `else 0if value`), unless the cursor already
--- sits inside a word there (`first_|name`: completing inside an identifier joins by design).
---@return boolean
function M.glues(line, col, end_col, text)
  local after = line:sub(end_col + 1, end_col + 1)
  if after == '' or not after:match('[%w_]') then
    return false
  end
  local last = text:match('[^\n]*$'):sub(-1)
  if last == '' or not last:match('[%w_]') then
    return false
  end
  local before = col > 0 and line:sub(col, col) or ''
  local inside_word = before:match('[%w_]') ~= nil and not text:find('\n', 1, true)
  return not inside_word
end

---@type table|nil the last item not shown because it would glue (tests, :BitmambaStatus!)
M.last_rejected = nil

--- Stop waiting for the request in flight. The $/cancelRequest is sent one event-loop turn later,
--- and only if Neovim has not received the answer meanwhile: a reply that was already read has
--- its handlers queued ahead of it, and a cancel for an answered request only makes the daemon
--- log "unknown message id".
local function cancel(bufnr, st)
  if st.timer then
    st.timer:stop()
  end
  if st.req_id then
    local id, client_id = st.req_id, st.req_client
    st.req_id = nil -- the handler ignores the answer from now on
    vim.schedule(function()
      local client = vim.lsp.get_client_by_id(client_id)
      if not client then
        return
      end
      local r = client.requests[id]
      if r and r.type == 'pending' then
        client:cancel_request(id)
        M.stats.cancelled = M.stats.cancelled + 1
      else
        M.stats.answered_before_cancel = M.stats.answered_before_cancel + 1
      end
    end)
  end
end

---@param bufnr integer
---@param st bitmamba.BufState
---@param client vim.lsp.Client
---@param result table|nil
---@param req table
local function on_result(bufnr, st, client, result, req)
  M.stats.responses = M.stats.responses + 1
  if not result then
    return
  end
  local items = result.items or result
  local raw = items[1]
  if not raw or not M.enabled then
    return
  end
  -- Drop answers for a buffer state or position the user has left.
  local row, col = cursor()
  if api.nvim_get_current_buf() ~= bufnr or not in_insert() or api.nvim_buf_get_changedtick(bufnr) ~= req.changedtick
    or row ~= req.row or col ~= req.col then
    M.stats.stale = M.stats.stale + 1
    return
  end
  local text = raw.insertText
  if type(text) == 'table' then -- a snippet: insert its text without placeholders
    text = text.value:gsub('%$%b{}', function(p)
      return p:match('^%${%d+:(.*)}$') or ''
    end):gsub('%$%d+', '')
  end
  local line = line_at(bufnr, row)
  local start_col, end_col = col, col
  if raw.range then
    local s, e = raw.range['start'], raw.range['end']
    if s.line ~= row or e.line ~= row then
      return -- multi-line ranges are not something this daemon sends
    end
    start_col = to_byte(line, s.character, client.offset_encoding)
    end_col = to_byte(line, e.character, client.offset_encoding)
  end
  if start_col > col or end_col < col then
    return
  end
  if M.glues(line, col, end_col, text) then
    M.stats.glued = M.stats.glued + 1
    M.last_rejected = { reason = 'glue', text = text, after = line:sub(end_col + 1), row = row, col = start_col }
    return
  end
  st.item = {
    client_id = client.id,
    row = row,
    col = start_col,
    text = text,
    tail = line:sub(col + 1, end_col),
    command = raw.command,
    request = req,
  }
  M.last_item = st.item
  local rest, at_row, at_col = remaining(bufnr, st.item)
  if not rest then
    st.item = nil
    return
  end
  st.tick = api.nvim_buf_get_changedtick(bufnr)
  render(bufnr, st, rest, at_row, at_col)
  M.stats.shown = M.stats.shown + 1
end

--- Ask the server for a suggestion at the cursor now.
function M.request(bufnr)
  bufnr = resolve(bufnr)
  local st = state(bufnr)
  cancel(bufnr, st)
  local client = M.client(bufnr)
  if not client or not in_insert() or not M.enabled then
    return
  end
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 2 } -- Automatic
  local row, col = cursor()
  local req = {
    row = row,
    col = col,
    character = params.position.character,
    changedtick = api.nvim_buf_get_changedtick(bufnr),
    lines = api.nvim_buf_get_lines(bufnr, 0, -1, false),
    encoding = client.offset_encoding,
  }
  local id
  local ok, rid = client:request('textDocument/inlineCompletion', params, function(err, result)
    if st.req_id ~= id then
      return -- cancelled or superseded
    end
    st.req_id = nil
    if err then
      M.stats.errors = M.stats.errors + 1
      M.last_error = err
      return
    end
    M.last_error = nil
    on_result(bufnr, st, client, result, req)
  end, bufnr)
  if ok then
    id = rid
    st.req_id = rid
    st.req_client = client.id
    M.stats.requests = M.stats.requests + 1
  end
end

--- Ask after `debounce_ms` of quiet (each call restarts the wait and cancels what is in flight).
function M.schedule(bufnr)
  bufnr = resolve(bufnr)
  local st = state(bufnr)
  cancel(bufnr, st)
  if not config.options.auto_trigger or not M.enabled then
    return
  end
  st.timer = st.timer or vim.uv.new_timer()
  st.timer:start(config.options.debounce_ms, 0, vim.schedule_wrap(function()
    if api.nvim_buf_is_valid(bufnr) and api.nvim_get_current_buf() == bufnr and in_insert() then
      M.request(bufnr)
    end
  end))
end

--- Re-check the suggestion against the buffer: keep (trimmed) if the user typed what it shows.
---@return boolean kept
local function sync(bufnr, st)
  st.tick = api.nvim_buf_get_changedtick(bufnr)
  if not st.item then
    return false
  end
  local rest, row, col = remaining(bufnr, st.item)
  if not rest then
    M.dismiss(bufnr)
    return false
  end
  render(bufnr, st, rest, row, col)
  return true
end

local function on_text_changed(bufnr)
  local st = state(bufnr)
  if not sync(bufnr, st) then
    M.schedule(bufnr) -- also cancels the request in flight
  else
    cancel(bufnr, st) -- typing on through the suggestion: an older request is stale
  end
end

local function on_cursor_moved(bufnr)
  local st = state(bufnr)
  if api.nvim_buf_get_changedtick(bufnr) == st.tick then
    -- the cursor moved without an edit: dismiss, and ask again at the new place
    if st.item then
      M.dismiss(bufnr)
    end
    M.schedule(bufnr)
  else
    on_text_changed(bufnr)
  end
end

--- Insert `piece` (a prefix of the remaining suggestion) at the cursor.
local function insert(bufnr, st, rest, row, col, piece)
  local item = st.item
  local whole = piece == rest
  local lines = vim.split(piece, '\n', { plain = true })
  local end_col = whole and col + #item.tail or col
  api.nvim_buf_set_text(bufnr, row, col, row, end_col, lines)
  local new_row = row + #lines
  local new_col = (#lines == 1 and col or 0) + #lines[#lines]
  if whole then
    st.item = nil
    clear_mark(bufnr, st)
  end
  api.nvim_win_set_cursor(0, { new_row, new_col })
  if whole then
    M.stats.accepted = M.stats.accepted + 1
    if item.command then
      local client = vim.lsp.get_client_by_id(item.client_id)
      if client then
        client:exec_cmd(item.command, { bufnr = bufnr })
      end
    end
  else
    M.stats.partial = M.stats.partial + 1
    -- the buffer now agrees with the (shorter) suggestion; TextChangedI redraws it
  end
end

---@param how 'all'|'word'|'line'
---@return boolean accepted
function M.accept(how, bufnr)
  bufnr = resolve(bufnr)
  local st = bufs[bufnr]
  if not st or not st.item or not st.extmark then
    return false
  end
  local rest, row, col = remaining(bufnr, st.item)
  if not rest then
    M.dismiss(bufnr)
    return false
  end
  local piece = rest
  if how == 'word' then
    piece = rest:match('^[ \t]*[%w_]+') or rest:match('^[ \t]*[^%w_%s]+') or rest:match('^\n[ \t]*')
      or rest:match('^%s+') or rest
  elseif how == 'line' then
    if rest:sub(1, 1) == '\n' then
      piece = rest:match('^\n[^\n]*')
    else
      piece = rest:match('^[^\n]*')
    end
  end
  insert(bufnr, st, rest, row, col, piece)
  return true
end

local group = api.nvim_create_augroup('bitmamba.ghost', { clear = true })

--- Watch a buffer the daemon is attached to.
function M.attach(bufnr)
  if vim.b[bufnr].bitmamba_ghost then
    return
  end
  vim.b[bufnr].bitmamba_ghost = true
  api.nvim_create_autocmd({ 'TextChangedI', 'TextChangedP' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      on_text_changed(bufnr)
    end,
  })
  api.nvim_create_autocmd('CursorMovedI', {
    group = group,
    buffer = bufnr,
    callback = function()
      on_cursor_moved(bufnr)
    end,
  })
  api.nvim_create_autocmd('InsertEnter', {
    group = group,
    buffer = bufnr,
    callback = function()
      state(bufnr).tick = api.nvim_buf_get_changedtick(bufnr)
      M.schedule(bufnr)
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      local st = state(bufnr)
      cancel(bufnr, st)
      M.dismiss(bufnr)
    end,
  })
  api.nvim_create_autocmd('BufUnload', {
    group = group,
    buffer = bufnr,
    callback = function()
      local st = bufs[bufnr]
      if st then
        cancel(bufnr, st)
        if st.timer then
          st.timer:close()
        end
        bufs[bufnr] = nil
      end
    end,
  })
end

function M.detach(bufnr)
  M.dismiss(bufnr)
  local st = bufs[bufnr]
  if st then
    cancel(bufnr, st)
  end
  pcall(api.nvim_clear_autocmds, { group = group, buffer = bufnr })
  vim.b[bufnr].bitmamba_ghost = nil
end

return M
