-- :checkhealth bitmamba
local M = {}

local function present(v)
  return v ~= nil and v ~= vim.NIL
end

--- What the running daemon says about its model (the `bitmamba/status` request).
local function check_daemon(health, bitmamba, client)
  health.ok(
    'bitmamba-lsp running (client id ' .. client.id .. ', encoding ' .. tostring(client.offset_encoding) .. ')'
  )
  local log_file = bitmamba.log_file()
  local log_hint = log_file and ('the daemon log: ' .. log_file)
    or ("the daemon log: Neovim's LSP log (" .. vim.lsp.get_log_path() .. ')')
  local s, err = bitmamba.status_sync(3000)
  if not s then
    health.error(err, { log_hint, ':BitmambaRestart' })
    return
  end
  local state = present(s.model_state) and s.model_state or 'unknown'
  local wanted = bitmamba.wanted_model() or 'the default model'
  if state == 'ready' then
    health.ok(string.format(
      'model %s ready (%s, SIMD %s, %s threads)',
      tostring(s.model),
      present(s.arch) and s.arch or '?',
      present(s.simd) and s.simd or '?',
      present(s.threads) and s.threads or '?'
    ))
  elseif state == 'loading' then
    health.warn('the model is still loading (' .. wanted .. '): no suggestions until it is ready', {
      'run :checkhealth bitmamba again in a moment',
      log_hint,
    })
  elseif state == 'failed' then
    health.error(
      'the model failed to load (' .. wanted .. '): ' .. (present(s.model_error) and tostring(s.model_error) or 'no reason given'),
      {
        'fix the `model` setting (settings = { model = ... }) or `--model` in `cmd`, then :BitmambaRestart',
        log_hint,
      }
    )
  else
    health.warn('model state: ' .. tostring(state) .. ' (' .. wanted .. ')', { log_hint })
  end
  if present(s.documents) then
    health.info(string.format(
      '%d documents open, suggestions accepted %d of %d',
      s.documents,
      present(s.accepted) and s.accepted or 0,
      present(s.shown) and s.shown or 0
    ))
  end
  local ghost = require('bitmamba.ghost')
  if ghost.last_error then
    health.warn('the daemon answered a suggestion request with an error: ' .. tostring(ghost.last_error.message or ghost.last_error))
  end
  if state == 'ready' then
    health.info(log_hint)
  end
end

function M.check()
  local health = vim.health
  local config = require('bitmamba.config')
  local bitmamba = require('bitmamba')
  health.start('bitmamba')
  if vim.fn.has('nvim-0.11') == 1 then
    health.ok('Neovim ' .. tostring(vim.version()))
  else
    health.error('Neovim 0.11 or newer is needed')
  end
  if not bitmamba.is_setup() then
    health.warn("require('bitmamba').setup() has not been called")
  end
  local cmd = config.options.cmd
  if type(cmd) == 'table' then
    local exe = cmd[1]
    if vim.fn.executable(exe) == 1 then
      health.ok(exe .. ' found: ' .. vim.fn.exepath(exe))
    else
      health.error(exe .. ' is not executable: `pip install bitmamba-lsp` or set `cmd`')
    end
  else
    health.info('cmd is a function (a custom transport)')
  end
  health.info(bitmamba.uses_builtin() and 'ghost text: built-in vim.lsp.inline_completion'
    or 'ghost text: bitmamba.nvim extmarks')
  local clients = vim.lsp.get_clients({ name = bitmamba.name })
  if #clients == 0 then
    health.info('bitmamba-lsp is not running (it starts when a file is opened)')
  else
    check_daemon(health, bitmamba, clients[1])
  end
end

return M
