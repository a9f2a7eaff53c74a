"""Warm start: a process that has already imported the daemon, forked for each editor that starts one.

Much of a cold daemon's start is Python importing NumPy, the engine and our own modules and building
the tokenizer: the same work on every start of every editor. With
``bitmamba-lsp --warm`` (what the Neovim and VS Code integrations run) the command the editor
spawns is only a launcher:

1. it connects to the warm server's Unix socket (``socket_path()``; one per user, interpreter,
   installed code and environment) and hands over its stdin, stdout and stderr (SCM_RIGHTS) with
   its arguments, working directory, environment and umask;
2. the warm server forks: the child takes those descriptors as its own stdio and runs the daemon
   exactly as ``bitmamba-lsp`` would (``bitmamba_lsp.cli.main(["lsp", ...])``), so the editor talks
   to it directly, with no relay in between;
3. the launcher waits: it forwards SIGTERM/SIGINT/SIGHUP to the child and exits with the child's
   exit code, which the warm server sends back when it reaps the child. When the launcher dies the
   warm server sees its connection close and ends the child.

When no warm server answers, the launcher runs the daemon itself (a cold start) and starts a warm
server in the background for the next time (``spawn``: a new session, not niced: the daemons it
forks inherit that). The daemon spawns it ``SPAWN_DELAY_S`` after its own start, or when it exits
if that comes first (``spawn_later``, ``spawn_pending``), so that not even the new process's start
competes with this one. A warm server ends after ``IDLE_S`` seconds without a
daemon running, or on ``bitmamba warm stop``.

It starts none of our threads before it forks (a thread does not survive a fork: the engine's thread
pools, the tokenizer library's); NumPy's OpenBLAS pool, on a host with several cores, is stopped
and restarted around the fork by OpenBLAS's own fork handlers. It does keep the last model a command line named (``--model FILE``), loaded
while idle after that daemon started, its prefill rate measured, with a pool of one thread (no worker
thread); a child forked for the same file, unchanged since (size, time), gets it from the fork, sets
its threads and skips the load (``KeptModel``). The weights' pages are then shared by every daemon
forked from it. Any other model is loaded by the child, as a cold daemon does.

Linux only (fork after importing NumPy is not safe on macOS; Windows has no fork); elsewhere, and
with ``BITMAMBA_LSP_WARM=0``, ``--warm`` is a plain cold start. This module imports only the
standard library at the top: the launcher must start in milliseconds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time

ENV = "BITMAMBA_LSP_WARM"  # "0": never warm; "1": warm even without --warm
RUNTIME_ENV = "BITMAMBA_LSP_RUNTIME_DIR"  # where the sockets live (tests; else XDG_RUNTIME_DIR)
IDLE_S = 1800.0  # a warm server with no daemon running ends after this long
SPAWN_DELAY_S = 3.0  # a cold daemon spawns the warm server for the next start this long after its own
CODE_CHECK_S = 10.0  # how often a warm server checks that the installed code is still its own
MAX_HEADER = 1 << 20
GO = b"g"  # launcher -> daemon: it has the daemon's pid and hands over its stdio (see attach)
GO_TIMEOUT_S = 30.0
_KEY_ENV_PREFIXES = ("PYTHON", "BITMAMBA_", "HF_")
_KEY_ENV_NAMES = ("XDG_CACHE_HOME", "VIRTUAL_ENV", "HOME")


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "send_fds")


def wanted(argv: list[str]) -> bool:
    """Whether this `bitmamba-lsp` command line asks for a warm start (and may have one)."""
    env = os.environ.get(ENV, "")
    if env == "0" or not supported() or "--tcp" in argv or any(a.startswith("--tcp=") for a in argv):
        return False
    return env == "1" or "--warm" in argv


def runtime_dir() -> str:
    own = os.environ.get(RUNTIME_ENV, "")
    if own:
        return own
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "bitmamba-lsp")
    return os.path.join("/tmp", f"bitmamba-lsp-{os.getuid()}")


def _private_dir(path: str) -> str:
    """`path` created mode 0700 if absent; refused unless it is a directory of ours that only we can
    enter (another user must not be able to plant a socket there)."""
    with contextlib.suppress(OSError):
        os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} is not a private directory of this user")
    return path


def key() -> str:
    """What a warm server must share with a launcher to serve it: the interpreter, the installed
    package (every module's size and time, so an upgrade or an edit is never served by old code)
    and the environment variables read at import time."""
    h = hashlib.sha256()
    h.update(f"{os.path.realpath(sys.executable)}|{sys.version}".encode())
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root, dirs, files in os.walk(pkg):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "data"))
        for name in sorted(files):
            if name.endswith((".py", ".so", ".pyd")):
                p = os.path.join(root, name)
                st = os.stat(p)
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    core = sys.modules.get("bitmamba_lsp._core")
    extra = [getattr(core, "__file__", None) or ""]
    extra += [d for d in sys.path if d.endswith("-packages")]  # an upgraded dependency changes it
    for p in extra:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for k in sorted(os.environ):
        if (k.startswith(_KEY_ENV_PREFIXES) or k in _KEY_ENV_NAMES) and k not in (ENV, RUNTIME_ENV):
            h.update(f"{k}={os.environ[k]}\n".encode())
    return h.hexdigest()[:16]


def socket_path(k: str | None = None) -> str:
    return os.path.join(runtime_dir(), f"warm-{k or key()}.sock")


# -- the wire: one length-prefixed JSON request (with the three descriptors), JSON lines back --


def _send_request(sock: socket.socket, request: dict, fds: list[int]) -> None:
    body = json.dumps(request).encode()
    socket.send_fds(sock, [struct.pack("!I", len(body)) + body], fds)


def _recv_request(sock: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(sock, 65536, 3)
    try:
        if len(data) < 4:
            raise ValueError("a request shorter than its length prefix")
        (n,) = struct.unpack("!I", data[:4])
        if n > MAX_HEADER:
            raise ValueError(f"a request of {n} bytes")
        body = data[4:]
        while len(body) < n:
            more = sock.recv(n - len(body))
            if not more:
                raise ValueError("the request ended early")
            body += more
        request = json.loads(body[:n])
        if not isinstance(request, dict) or not isinstance(request.get("argv"), list):
            raise ValueError("a request without argv")
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} descriptors instead of 3")
        return request, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


# -- the launcher (the editor's process) --


def attach(argv: list[str], timeout: float = 2.0, pid_timeout: float = 10.0) -> int | None:
    """Hand this process's stdio to a warm server and wait for its daemon's exit code; None when no
    warm server took it (then nothing was read from stdin: the caller starts cold).

    The forked daemon touches the descriptors only after this launcher, having its pid, sends it
    "go" on the socket; a launcher that gave up before (no pid within `pid_timeout`: a busy or
    stuck warm server) closes the socket instead, and that daemon ends without reading a byte. So
    the editor's stdio is never read by two daemons."""
    try:
        path = socket_path()
        if not os.path.exists(path):
            return None
        _private_dir(os.path.dirname(path))  # nobody else can have put a socket there
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        if _peer_uid(sock) != os.getuid():  # stdio goes only to a process of this user
            sock.close()
            return None
    except OSError:
        return None
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        cwd = os.getcwd()
    except OSError:  # a deleted working folder: the daemon runs from / (a cold one would too)
        cwd = "/"
    request = {"argv": argv, "cwd": cwd, "env": dict(os.environ), "umask": umask}
    try:
        _send_request(sock, request, [0, 1, 2])
        sock.settimeout(pid_timeout)
        reader = sock.makefile("rb")
        first = reader.readline()  # {"pid": N} once the child is forked
        pid = int(json.loads(first)["pid"]) if first else 0
        if pid > 0:
            sock.sendall(GO)
    except (OSError, ValueError, KeyError, TypeError):
        pid = 0
    if pid <= 0:
        sock.close()  # a daemon forked for us, if any, sees the socket close and ends untouched
        return None
    # The editor's pipes are the daemon's now: once it exits, the editor sees the end of its output
    # at once, not when this launcher has also gone.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    sock.settimeout(None)
    while True:
        try:
            line = reader.readline()
        except InterruptedError:
            continue
        except OSError:
            line = b""
        if not line:  # the warm server went away: the child may still serve the editor
            while _alive(pid):
                time.sleep(0.2)
            return 1
        try:
            code = int(json.loads(line)["exit"])
        except (ValueError, KeyError, TypeError):
            return 1
        if code < 0:  # the daemon died of a signal: so does its launcher (what the editor sees)
            with contextlib.suppress(OSError, ValueError):  # SIGKILL's disposition cannot be set
                signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
            return 128 - code
        return code


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spawn(*serve_args: str) -> None:
    """Start a warm server (`serve` with `serve_args`), detached from this process, from / and
    without the current folder on its path (best effort). Without arguments: the one a cold start
    leaves for the next start, importing after a short delay."""
    import subprocess

    args = serve_args or ("--delay", str(SPAWN_DELAY_S))
    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-P", "-m", "bitmamba_lsp.lsp.warm", "serve", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True, cwd="/",
        )


# -- the warm server --


# What a daemon's start imports: the command line (argparse tree, engine formats), the engine, the
# daemon's modules and what its first request needs.
_PRELOADED = (
    "bitmamba_lsp.cli",
    "bitmamba_lsp.engine",
    "bitmamba_lsp.lsp.cli",
    "bitmamba_lsp.lsp.preload",
    "bitmamba_lsp.lsp.server",
    "bitmamba_lsp.lsp.worker",
)


def _prepare() -> None:
    """Import what a daemon's start imports (and what the first request needs), so that a forked
    child starts where a cold daemon is after its imports."""
    import importlib

    for name in _PRELOADED:
        importlib.import_module(name)
    from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer
    from bitmamba_lsp.lsp.preload import derived_from

    # The bundled GPT-2 tokenizer (what a bare `.bin` uses), built once per process, and what the
    # daemon derives from a model's tokenizer: every child starts with them built. Encoding one
    # string uses none of the tokenizer library's threads.
    derived_from()(bundled_text_tokenizer())


def _model_arg(argv: list[str]) -> tuple[str | None, int | None]:
    """(--model, --threads) of a `bitmamba-lsp` command line, read by argparse with the daemon's own
    flags (abbreviations, `=`, repeats: the last one wins); (None, None) where it cannot."""
    import argparse

    p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    p.add_argument("--model", "-m")
    p.add_argument("--threads", "-t")
    try:
        args, _ = p.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return None, None
    try:
        threads = int(args.threads) if args.threads is not None else None
    except ValueError:
        threads = None
    return args.model, threads


class KeptModel:
    """The last `--model FILE` a daemon of this warm server loaded, kept for the next fork."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.ident: tuple | None = None
        self.model: object = None
        self.wanted: tuple[str, int | None] | None = None

    @staticmethod
    def identify(name: str) -> tuple | None:
        try:
            st = os.stat(name)
        except OSError:
            return None  # a Hub id or a missing file: the child deals with it
        if not os.path.isfile(name):
            return None
        return (os.path.realpath(name), st.st_size, st.st_mtime_ns)

    def note(self, argv: list[str], cwd: str) -> None:
        """A daemon was started with `argv` in `cwd`: keep its model next, if it names a file."""
        name, threads = _model_arg(argv)
        if name is None:
            return
        name = os.path.join(cwd, name)  # as the daemon reads it (an absolute name stays itself)
        if self.identify(name) is not None and self.identify(name) != self.ident:
            self.wanted = (name, threads)

    def load_wanted(self, log: _Log) -> None:
        """Load the model noted last (on the warm server's idle time), replacing the one kept."""
        if self.wanted is None:
            return
        name, threads = self.wanted
        self.wanted = None
        ident = self.identify(name)
        self.name = self.ident = self.model = None
        try:
            from bitmamba_lsp.engine import load
            from bitmamba_lsp.lsp.prefill_rate import prefill_rate
            from bitmamba_lsp.lsp.preload import derived_from
            from bitmamba_lsp.lsp.worker import PREFILL_RATE

            t0 = time.perf_counter()
            model = load(name, threads=threads, prepare_tokenizer=derived_from())
            if getattr(model, "tokenizer", None) is None:
                return  # the daemon refuses it anyway
            model.extra[PREFILL_RATE] = (model.threads, prefill_rate(model))
            model.threads = 1  # joins the pool's worker threads: none may exist at a fork
            self.name, self.ident, self.model = name, ident, model
            log(f"kept {name} ({time.perf_counter() - t0:.3f} s)")
        except Exception as exc:  # the daemons that use it report its errors themselves
            log(f"could not keep {name}: {type(exc).__name__}: {exc}")

    def offer(self, argv: list[str], log: _Log) -> None:
        """In a forked child (its working folder the launcher's): hand the kept model to the
        daemon's preload if `argv` names it, with the threads a cold start would use."""
        arg, threads = _model_arg(argv)
        if self.model is None or arg is None or self.name is None:
            return
        if os.path.join(os.getcwd(), arg) != self.name or self.identify(arg) != self.ident:
            return
        from bitmamba_lsp.lsp import preload

        model = self.model
        model.threads = threads if threads else 0  # type: ignore[attr-defined]  # 0: one per core
        preload.offer(arg, model)
        log(f"daemon {os.getpid()} has the kept model ({model.threads} threads)")  # type: ignore[attr-defined]


class _Log:
    def __init__(self, path: str | None) -> None:
        self.path = path

    def __call__(self, msg: str) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}\n")
        except OSError:
            pass


def serve(idle_s: float = IDLE_S, delay_s: float = 0.0, log_path: str | None = None) -> int:
    """Run a warm server until `idle_s` seconds pass with no daemon running (never when 0), or its
    socket is removed or replaced. Returns 0; 0 too, at once, when another one already serves this key."""
    import fcntl

    # A server started with `python -m` from some folder would import from that folder for as long
    # as it runs (a project's own uuid.py...), which no daemon started cold from elsewhere would.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path.pop(0)
    os.chdir("/")
    k = key()
    folder = _private_dir(runtime_dir())
    with open(os.path.join(folder, f"warm-{k}.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0  # another warm server for this key is starting or running
        log = _Log(log_path if log_path is not None else os.path.join(folder, f"warm-{k}.log"))
        return _serve_locked(k, folder, idle_s, delay_s, log, lock.fileno())


def _serve_locked(k: str, folder: str, idle_s: float, delay_s: float, log: _Log, lock_fd: int) -> int:
    import selectors

    path = socket_path(k)
    if delay_s > 0:
        time.sleep(delay_s)
    t0 = time.perf_counter()
    _prepare()
    log(f"ready in {time.perf_counter() - t0:.3f} s, key {k}")

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a socket left by a warm server that died (we hold the lock: none runs)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.setblocking(False)
    ident = os.stat(path).st_ino
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    # A child's exit wakes the loop at once (SIGCHLD through a wakeup socket): its launcher, and the
    # editor behind it, wait for the exit code.
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)
    sel.register(wake_r, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    kept = KeptModel()
    last_fork = 0.0
    served = 0
    last_busy = last_check = time.monotonic()
    status_file = os.path.join(folder, f"warm-{k}.json")

    draining = False  # no new launchers (stopped, or the code changed): ends once its daemons have

    def write_status() -> None:
        tmp = status_file + ".tmp"
        with contextlib.suppress(OSError):
            with open(tmp, "w") as f:
                info = {"pid": os.getpid(), "socket": path, "served": served, "running": len(children)}
                json.dump(info, f)
            os.replace(tmp, status_file)

    def drain(why: str) -> None:
        nonlocal draining
        log(f"{why}: stopping" + (f" once its {len(children)} daemon(s) end" if children else ""))
        draining = True
        sel.unregister(listener)
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == ident:
                os.unlink(path)

    write_status()
    try:
        while True:
            events = sel.select(timeout=0.5)
            if not events and kept.wanted is not None and time.monotonic() - last_fork > 2.0:
                kept.load_wanted(log)  # the daemon just started has had its start to itself
            for ev, _ in events:
                if ev.fileobj is wake_r:
                    with contextlib.suppress(OSError):
                        wake_r.recv(4096)
                elif ev.fileobj is listener and not draining:
                    try:
                        conn, _ = listener.accept()
                    except OSError:
                        continue
                    pid = _start(conn, [listener, sel, wake_r, wake_w, *children.values()], lock_fd, log, kept)
                    last_fork = time.monotonic()
                    if pid:
                        served += 1
                        children[pid] = conn
                        sel.register(conn, selectors.EVENT_READ, pid)
                        write_status()
                else:  # a launcher's connection: readable only when it closed (its process ended)
                    conn = ev.fileobj  # type: ignore[assignment]
                    try:  # a peek: the "go" byte is the daemon's to read
                        gone = not conn.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
                    except BlockingIOError:
                        gone = False
                    except OSError:
                        gone = True
                    if gone:
                        sel.unregister(conn)
                        try:
                            os.kill(ev.data, signal.SIGTERM)
                            log(f"launcher of {ev.data} ended: SIGTERM to it")
                        except OSError:
                            pass
            for pid, code in _reap():
                conn = children.pop(pid, None)
                log(f"daemon {pid} exited with {code}")
                if conn is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        sel.unregister(conn)
                    with contextlib.suppress(OSError):
                        conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
                    conn.close()
                write_status()
            if children:
                last_busy = time.monotonic()
            if draining:
                if not children:
                    break
                continue
            try:
                replaced = os.stat(path).st_ino != ident
            except OSError:
                replaced = True
            if time.monotonic() - last_check > CODE_CHECK_S:
                last_check = time.monotonic()
                if key() != k:  # the package was upgraded or edited: launchers now look elsewhere
                    drain("the installed code changed")
                    continue
            if replaced:
                drain("socket removed or replaced")
                continue
            if idle_s > 0 and not children and time.monotonic() - last_busy > idle_s:
                log(f"idle for {idle_s:.0f} s: stopping")
                break
    finally:
        signal.set_wakeup_fd(-1)
        sel.close()
        listener.close()  # again when drained: a no-op
        wake_r.close()
        wake_w.close()
        try:
            if os.stat(path).st_ino == ident:
                os.unlink(path)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            os.unlink(status_file)
    return 0


def _reap() -> list[tuple[int, int]]:
    out = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        if pid == 0:
            return out
        out.append((pid, os.waitstatus_to_exitcode(status) if status else 0))


def _start(conn: socket.socket, inherited: list, lock_fd: int, log: _Log, kept: KeptModel) -> int:
    """Fork a daemon for the launcher on `conn`; its pid (sent to the launcher), or 0 (conn closed).
    The child closes what it inherits of the warm server (`inherited`: the listener, the selector,
    other launchers' connections; the lock, which would otherwise outlive the warm server)."""
    try:
        conn.settimeout(2.0)
        uid = _peer_uid(conn)
        if uid != os.getuid():
            raise PermissionError(f"a launcher of uid {uid}")
        request, fds = _recv_request(conn)
    except (OSError, ValueError) as exc:
        log(f"refused a launcher: {exc}")
        conn.close()
        return 0
    try:
        pid = os.fork()
    except OSError as exc:  # no memory or process left: the launcher starts cold
        log(f"could not fork: {exc}")
        for fd in fds:
            os.close(fd)
        conn.close()
        return 0
    if pid == 0:  # the daemon
        code = 1
        try:
            signal.set_wakeup_fd(-1)  # the warm server's signal set-up, before its sockets close
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for obj in inherited:
                obj.close()
            os.close(lock_fd)
            conn.settimeout(GO_TIMEOUT_S)
            try:
                go = conn.recv(1)
            except OSError:
                go = b""
            conn.close()
            if go != GO:  # the launcher gave up (it starts cold): never touch its stdio
                os._exit(0)
            _become_daemon(request, fds)
            kept.offer([str(a) for a in request["argv"]], log)
            from bitmamba_lsp.cli import main

            code = main(["lsp", *[str(a) for a in request["argv"]]])
        except SystemExit as exc:  # argparse's errors, as the interpreter would report them
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    for fd in fds:
        os.close(fd)
    try:  # first: the launcher waits for it (and the daemon for the launcher's "go")
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        conn.setblocking(False)
    except OSError:
        pass  # the launcher is gone: the daemon sees no "go" and ends
    log(f"daemon {pid} for {request['argv']!r} in {request.get('cwd')}")
    kept.note([str(a) for a in request["argv"]], str(request.get("cwd") or "/"))
    return pid


def _become_daemon(request: dict, fds: list[int]) -> None:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    env = request.get("env")
    if isinstance(env, dict):
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
    os.environ[ENV] = "0"  # this daemon is the warm start: it (and what it spawns) never hands off again
    if isinstance(request.get("umask"), int):
        os.umask(request["umask"])
    with contextlib.suppress(OSError):
        os.chdir(str(request.get("cwd") or "/"))
    sys.argv = ["bitmamba-lsp", *[str(a) for a in request["argv"]]]


# -- the launcher's entry points, `bitmamba warm` and `python -m bitmamba_lsp.lsp.warm` --

_attempted = False


def try_warm(argv: list[str]) -> int | None:
    """For `bitmamba-lsp ARGS` / `bitmamba lsp ARGS`: the exit code of a warm daemon that served this
    start, or None (then the caller starts cold; a warm server is spawned for the next start when
    one was wanted). Tried once per process."""
    global _attempted
    if _attempted or not wanted(argv):
        return None
    _attempted = True
    code = attach(argv)
    if code is None:
        global _spawn_wanted
        _spawn_wanted = True  # by the cold daemon this process runs: spawn_later
    return code


_spawn_wanted = False  # a warm start was wanted and none answered: spawn one for the next start
_spawn_lock = threading.Lock()


def spawn_later(delay_s: float = SPAWN_DELAY_S) -> None:
    """In a cold daemon whose start wanted a warm one: spawn it `delay_s` from now (on a timer
    thread), once this start is over; `spawn_pending` does it at once (at exit)."""
    if _spawn_wanted:
        t = threading.Timer(delay_s, spawn_pending)
        t.daemon = True
        t.start()


def spawn_pending() -> None:
    """Spawn the warm server `try_warm` found missing, if not done yet (once per process)."""
    global _spawn_wanted
    with _spawn_lock:
        wanted_now, _spawn_wanted = _spawn_wanted, False
    if wanted_now:
        spawn("--delay", "0")


def launch(argv: list[str] | None = None) -> int:
    """The `bitmamba-lsp` command: a warm start when asked for and possible, else the daemon here."""
    args = sys.argv[1:] if argv is None else list(argv)
    code = try_warm(args)
    if code is not None:
        return code
    from bitmamba_lsp.cli import main

    return main(["lsp", *args])


def status() -> dict | None:
    """The running warm server for this key: {"pid", "socket", "served", "running"}, or None."""
    k = key()
    try:
        with open(os.path.join(runtime_dir(), f"warm-{k}.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not _alive(int(info.get("pid", 0))) or not os.path.exists(socket_path(k)):
        return None
    return info


def stop(wait_s: float = 5.0) -> bool:
    """Stop this key's warm server (it removes its socket; running daemons go on). True if one ran."""
    info = status()
    if info is None:
        return False
    try:
        os.unlink(info["socket"])
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _alive(int(info["pid"])):
        time.sleep(0.05)
    return True


def register(sub) -> None:  # type: ignore[no-untyped-def]
    p = sub.add_parser(
        "warm", help="the warm daemon of `bitmamba-lsp --warm`: start, status, stop, serve (foreground)"
    )
    _add_arguments(p)
    p.set_defaults(func=run)


def _add_arguments(p) -> None:  # type: ignore[no-untyped-def]
    p.add_argument("action", choices=["start", "status", "stop", "serve"])
    p.add_argument("--idle", type=float, default=IDLE_S, help=f"seconds without a daemon before it ends ({IDLE_S:.0f}; 0: never)")
    p.add_argument("--delay", type=float, default=0.0, help="serve: seconds to wait before importing")


def run(args) -> int:  # type: ignore[no-untyped-def]
    if not supported():
        print("error: a warm start needs Linux", file=sys.stderr)
        return 1
    if args.action == "serve":
        try:
            return serve(args.idle, args.delay)
        except PermissionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.action == "start":
        if status() is None:
            spawn("--idle", str(args.idle))
        return 0
    if args.action == "status":
        info = status()
        print(json.dumps(info))
        return 0 if info else 1
    print("stopped" if stop() else "no warm server was running")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bitmamba_lsp.lsp.warm")
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
