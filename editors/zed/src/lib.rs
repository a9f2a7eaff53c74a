//! Zed extension: registers bitmamba-lsp as a language server. Zed shows only
//! textDocument/completion items (no LSP inline completion), so the daemon's popup fallback
//! (`completionFallback`) is switched on unless the user's settings say otherwise.
use zed_extension_api::{self as zed, serde_json, settings::LspSettings, LanguageServerId, Result};

struct Bitmamba;

impl zed::Extension for Bitmamba {
    fn new() -> Self {
        Bitmamba
    }

    fn language_server_command(
        &mut self,
        language_server_id: &LanguageServerId,
        worktree: &zed::Worktree,
    ) -> Result<zed::Command> {
        let binary = LspSettings::for_worktree(language_server_id.as_ref(), worktree)
            .ok()
            .and_then(|s| s.binary);
        let (path, args) = match binary {
            Some(b) => (b.path, b.arguments),
            None => (None, None),
        };
        let command = path.or_else(|| worktree.which("bitmamba-lsp")).ok_or_else(|| {
            "bitmamba-lsp is not on PATH: `pip install bitmamba-lsp`, or set \
             lsp.bitmamba-lsp.binary.path in Zed's settings"
                .to_string()
        })?;
        Ok(zed::Command {
            command,
            args: args.unwrap_or_default(),
            env: worktree.shell_env(),
        })
    }

    fn language_server_initialization_options(
        &mut self,
        language_server_id: &LanguageServerId,
        worktree: &zed::Worktree,
    ) -> Result<Option<serde_json::Value>> {
        let mut options = LspSettings::for_worktree(language_server_id.as_ref(), worktree)
            .ok()
            .and_then(|s| s.initialization_options)
            .unwrap_or_else(|| serde_json::json!({}));
        if let Some(map) = options.as_object_mut() {
            map.entry("completionFallback").or_insert(serde_json::Value::Bool(true));
        }
        Ok(Some(options))
    }
}

zed::register_extension!(Bitmamba);
