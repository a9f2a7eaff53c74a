;;; bitmamba-eglot.el --- bitmamba-lsp with eglot  -*- lexical-binding: t; -*-
;;
;; Eglot (Emacs 29+) has no inline completion: the daemon's suggestion is a candidate of
;; `completion-at-point' (Corfu / Company show it), which needs completionFallback.
;; Eglot runs ONE server per major mode: this replaces e.g. pyright for Python buffers.
;; (For both at once, use lsp-mode, see bitmamba-lsp-mode.el.)

(with-eval-after-load 'eglot
  (add-to-list 'eglot-server-programs
               '((python-mode python-ts-mode)
                 . ("bitmamba-lsp" "--threads" "2"
                    :initializationOptions (:completionFallback t
                                            :maxTokens 48
                                            :multiline :json-false)))))

;; Then M-x eglot in a Python buffer, or:
;; (add-hook 'python-base-mode-hook #'eglot-ensure)

;;; bitmamba-eglot.el ends here
