;;; bitmamba-lsp-mode.el --- bitmamba-lsp with lsp-mode  -*- lexical-binding: t; -*-
;;
;; lsp-mode (9.0.1+) shows LSP 3.18 inline completions as ghost text
;; (lsp-inline-completion-mode). bitmamba runs as an add-on server next to the language's own
;; server. Accepting a suggestion runs its `bitmamba.accept' command (the daemon counts accepts).

(with-eval-after-load 'lsp-mode
  (lsp-register-client
   (make-lsp-client
    :new-connection (lsp-stdio-connection '("bitmamba-lsp" "--threads" "2"))
    :activation-fn (lsp-activate-on "python" "rust" "go" "javascript" "typescript" "c" "cpp")
    :add-on? t                          ; alongside pyright, rust-analyzer, ...
    :priority -2
    :server-id 'bitmamba
    :initialization-options (lambda () (list :maxTokens 48))))

  ;; Ask for a suggestion soon after typing stops (the default idle delay is 2 s).
  (setq lsp-inline-completion-idle-delay 0.3)
  (add-hook 'lsp-mode-hook #'lsp-inline-completion-mode))

;; While a suggestion is shown: C-<return> accepts, C-n / C-p cycle, C-g or <escape> dismisses
;; (lsp-inline-completion-active-map). M-x lsp-inline-completion-display asks explicitly.
;;
;; Without ghost text (or in a popup-only setup), set (list :completionFallback t) in
;; :initialization-options to get the suggestion as a completion-at-point candidate instead.

;;; bitmamba-lsp-mode.el ends here
