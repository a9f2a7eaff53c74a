-- Commands for bitmamba.nvim. Nothing starts until require('bitmamba').setup() is called
-- (lazy.nvim's `opts = {}` does that for you).
if vim.g.loaded_bitmamba then
  return
end
vim.g.loaded_bitmamba = true

local function cmd(name, fn, opts)
  vim.api.nvim_create_user_command(name, fn, opts or {})
end

cmd('BitmambaStatus', function(a)
  require('bitmamba').show_status(a.bang)
end, { bang = true, desc = "Show bitmamba-lsp's status (!: every field, in a window)" })
cmd('BitmambaRestart', function()
  require('bitmamba').restart()
end, { desc = 'Restart bitmamba-lsp' })
cmd('BitmambaEnable', function()
  require('bitmamba').enable()
end, { desc = 'Show inline suggestions' })
cmd('BitmambaDisable', function()
  require('bitmamba').disable()
end, { desc = 'Stop showing inline suggestions' })
cmd('BitmambaToggle', function()
  require('bitmamba').toggle()
end, { desc = 'Toggle inline suggestions' })
