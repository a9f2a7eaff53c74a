---@class bitmamba.Keymaps
---@field accept string|false        accept the whole suggestion (falls back to the key's normal meaning)
---@field accept_word string|false   accept the next word of the suggestion
---@field accept_line string|false   accept the rest of the current line of the suggestion
---@field dismiss string|false       hide the suggestion (leaving insert mode also hides it)
---@field trigger string|false       ask for a suggestion now

---@class bitmamba.Config
---@field cmd string[]               the daemon command (stdio)
---@field filetypes string[]|nil     filetypes to attach to (nil: every file buffer with a filetype)
---@field exclude_filetypes string[] never attach to these
---@field settings table             daemon settings (camelCase), sent as initializationOptions
---@field warm boolean               a warm start (BITMAMBA_LSP_WARM=1 in the daemon's environment):
---                                  from the second start on it is forked by a warm process that has
---                                  it imported (Linux; the process ends after 30 idle minutes)
---@field log_file string|false      the daemon's own log (`--log-file`); false: its stderr, which Neovim
---                                  records as [ERROR] lines in the LSP log
---@field debounce_ms integer        wait this long after the last keystroke before asking
---@field auto_trigger boolean       ask while typing (false: only with keymaps.trigger)
---@field builtin boolean|'auto'     'auto': use vim.lsp.inline_completion on Neovim >= 0.12
---@field hl_group string            highlight group of the ghost text
---@field keymaps bitmamba.Keymaps

local M = {}

---@type bitmamba.Config
M.defaults = {
  cmd = { 'bitmamba-lsp' },
  filetypes = nil,
  exclude_filetypes = { 'help', 'gitcommit', 'gitrebase', 'netrw', 'TelescopePrompt', 'oil', 'qf' },
  settings = {},
  warm = true,
  log_file = vim.fs.joinpath(vim.fn.stdpath('log'), 'bitmamba-lsp.log'),
  debounce_ms = 75,
  auto_trigger = true,
  builtin = 'auto',
  hl_group = 'BitmambaSuggestion',
  keymaps = {
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-C-Right>',
    dismiss = '<C-]>',
    trigger = '<M-\\>',
  },
}

---@type bitmamba.Config
M.options = vim.deepcopy(M.defaults)

---@param opts table|nil
---@return bitmamba.Config
function M.set(opts)
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  return M.options
end

return M
