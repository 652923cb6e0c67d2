def _pysandbox_session():
    # A session's runner: one interpreter that keeps its globals between executions.
    # Commands arrive as JSON lines on the original stdin; answers leave as JSON lines on
    # the original stdout. The code's own stdin is empty, and its stdout and stderr
    # (also those of child processes) are pipes this runner drains into the answer.
    import ast
    import base64
    import json
    import os
    import signal
    import sys
    import threading
    import traceback

    # The working directory is HOME (a tmpfs of the session's own): files put in the
    # session land there.
    os.chdir(os.environ.get("HOME") or "/tmp")
    cmd_in = os.fdopen(os.dup(0), "rb")
    chan = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, "r", closefd=False)
    LOG_CAP = 1 << 20  # bytes kept of each stream per execution

    class Drain:
        # Drains one stream (fd 1 or 2, a pipe now) into a buffer, capped. take() writes
        # a random marker through the same pipe and waits for it: everything written
        # before it has then been read.
        def __init__(self, fd):
            r, w = os.pipe()
            os.dup2(w, fd)
            os.close(w)
            self.fd = fd
            self.r = r
            self.lock = threading.Lock()
            self.seen = threading.Condition(self.lock)
            self.buf = bytearray()
            self.tail = b""
            self.dropped = 0
            self.want = None
            threading.Thread(target=self.pump, daemon=True).start()

        def pump(self):
            while True:
                data = os.read(self.r, 65536)
                if not data:
                    return
                with self.lock:
                    want = self.want
                    if want is not None:
                        hay = self.tail + data
                        i = hay.find(want)
                        if i >= 0:
                            data = hay[len(self.tail) : i] if i >= len(self.tail) else b""
                            part = self.tail[i:]
                            if i < len(self.tail) and self.buf.endswith(part):
                                # The marker began in the kept tail: drop that part.
                                del self.buf[len(self.buf) - len(part) :]
                            self.want = None
                            self.tail = b""
                            self.keep(data)
                            self.seen.notify_all()
                            continue
                        self.tail = hay[-len(want) :]
                    self.keep(data)

        def keep(self, data):
            room = LOG_CAP - len(self.buf)
            self.buf += data[: max(room, 0)]
            self.dropped += max(len(data) - max(room, 0), 0)

        def take(self):
            marker = b"\0pysandbox-" + os.urandom(12).hex().encode() + b"\0"
            with self.lock:
                self.want = marker
                self.tail = b""
            os.write(self.fd, marker)
            with self.lock:
                self.seen.wait_for(lambda: self.want is None, timeout=10)
                data, dropped = bytes(self.buf), self.dropped
                self.buf, self.dropped, self.want = bytearray(), 0, None
            out = [data.decode("utf-8", "replace")] if data else []
            if dropped:
                out.append("\n[pysandbox: %d bytes dropped]\n" % dropped)
            return out

    out = Drain(1)
    err = Drain(2)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)

    results = []

    def bundle(value):
        b = {"text": repr(value)}
        for meth, key in (("_repr_png_", "png"), ("_repr_html_", "html"), ("_repr_json_", "json")):
            f = getattr(value, meth, None)
            if callable(f):
                try:
                    v = f()
                except Exception:
                    continue
                if v is None:
                    continue
                if key == "png" and isinstance(v, bytes):
                    v = base64.b64encode(v).decode()
                b[key] = v
        return b

    def display(*values):
        for v in values:
            r = bundle(v)
            r["is_main_result"] = False
            results.append(r)

    def figures():
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        import io

        for num in plt.get_fignums():
            fig = plt.figure(num)
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            results.append({"text": repr(fig), "png": base64.b64encode(buf.getvalue()).decode(), "is_main_result": False})
        plt.close("all")

    user = {"__name__": "__main__", "__builtins__": __builtins__, "display": display}
    count = 0

    class Interrupted(KeyboardInterrupt):
        pass

    def on_alarm(signum, frame):
        raise Interrupted("execution timed out")

    signal.signal(signal.SIGALRM, on_alarm)

    def send(obj):
        chan.write(json.dumps(obj).encode() + b"\n")

    def execute(code, timeout, variables):
        nonlocal count
        count += 1
        del results[:]
        error = None
        user.update(variables or {})
        try:
            tree = ast.parse(code, "<cell>", "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                exec(compile(tree, "<cell>", "exec"), user)
                if last is not None:
                    value = eval(compile(last, "<cell>", "eval"), user)
                    if value is not None:
                        r = bundle(value)
                        r["is_main_result"] = True
                        results.append(r)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except SystemExit as e:
            error = {"name": "SystemExit", "value": str(e.code), "traceback": ""}
        except BaseException as e:
            tb = e.__traceback__.tb_next if e.__traceback__ else None
            name = "TimeoutError" if isinstance(e, Interrupted) else type(e).__name__
            error = {
                "name": name,
                "value": str(e),
                "traceback": "".join(traceback.format_exception(type(e), e, tb)),
            }
        try:
            figures()
        except Exception:
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        return {
            "results": list(results),
            "logs": {"stdout": out.take(), "stderr": err.take()},
            "error": error,
            "execution_count": count,
        }

    def safe_path(p):
        return p if os.path.isabs(p) else os.path.join(os.getcwd(), p)

    send({"ready": True})
    for line in cmd_in:
        try:
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "execute":
                send(execute(cmd["code"], float(cmd.get("timeout", 30)), cmd.get("globals")))
            elif op == "put":
                path = safe_path(cmd["path"])
                d = os.path.dirname(path)
                if d:
                    os.makedirs(d, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(base64.b64decode(cmd["data"]))
                send({"ok": True})
            elif op == "get":
                path = safe_path(cmd["path"])
                with open(path, "rb") as f:
                    data = f.read(int(cmd["max"]) + 1)
                if len(data) > int(cmd["max"]):
                    send({"error": "the file is larger than %d bytes" % int(cmd["max"])})
                else:
                    send({"data": base64.b64encode(data).decode()})
            else:
                send({"error": "unknown op"})
        except Exception as e:
            send({"error": "%s: %s" % (type(e).__name__, e)})


_pysandbox_session()
