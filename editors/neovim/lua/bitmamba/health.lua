-- :checkhealth bitmamba
local M = {}

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
  local exe = config.options.cmd[1]
  if vim.fn.executable(exe) == 1 then
    health.ok(exe .. ' found: ' .. vim.fn.exepath(exe))
  else
    health.error(exe .. ' is not executable: `pip install bitmamba-lsp` or set `cmd`')
  end
  health.info(bitmamba.uses_builtin() and 'ghost text: built-in vim.lsp.inline_completion'
    or 'ghost text: bitmamba.nvim extmarks')
  local clients = vim.lsp.get_clients({ name = bitmamba.name })
  if #clients == 0 then
    health.info('bitmamba-lsp is not running (it starts when a file is opened)')
  else
    health.ok('bitmamba-lsp running (client id ' .. clients[1].id .. ', encoding ' .. clients[1].offset_encoding .. ')')
  end
end

return M
