#!/usr/bin/python3
"""The host-matrix suite: runs in a guest of `cargo xtask vm`, as one identity, and
writes one JSON file of results (never judged from console text).

usage: suite.py --who NAME --expect cgroup_v2|rlimit --out FILE [--quick]

--expect says which mechanism must enforce memory and pids for this identity (the
guest knows whether it delegated a cgroup to it). --quick runs the subset that differs
by identity (mechanisms, OOM, leftovers); the full run adds the quick start, pids, CPU
quota (read from cpu.stat on the host side), doctor, --strict-limits, containment and SIGKILL leftovers.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BIN = "/opt/psb/pysandbox"
EXAMPLES = "/opt/psb/examples"


def sh(args, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 300)
    return subprocess.run(args, **kw)


def run(*args, code=None, extra=()):
    cmd = [BIN, "run", *args, *extra]
    if code is not None:
        cmd += ["--no-fs", "--code", code]
    return sh(cmd)


def report(p):
    try:
        return json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"no JSON report (exit {p.returncode}): {p.stderr.decode()[-400:]}")


def cgroup_dirs(pattern):
    """Cgroup directories whose name starts with `pattern`, anywhere in the hierarchy."""
    out = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        out += [os.path.join(root, d) for d in dirs if d.startswith(pattern)]
    return out


class Suite:
    def __init__(self, who, expect):
        self.who = who
        self.expect = expect
        self.checks = []

    def check(self, name):
        def deco(f):
            t = time.monotonic()
            try:
                detail = f() or ""
                ok = True
            except AssertionError as e:
                ok, detail = False, str(e) or "assertion failed"
            except Exception as e:  # a broken check is a failure, not a crash
                ok, detail = False, f"{type(e).__name__}: {e}"
            self.checks.append(
                {"name": name, "ok": ok, "detail": str(detail)[:2000], "secs": round(time.monotonic() - t, 2)}
            )
            print(f"suite[{self.who}]: {'PASS' if ok else 'FAIL'} {name}: {str(detail)[:300]}", flush=True)
            return f

        return deco


def main():
    a = sys.argv[1:]
    opt = lambda k: a[a.index(k) + 1]
    who, expect, out, quick = opt("--who"), opt("--expect"), opt("--out"), "--quick" in a
    # --own: this identity's cgroup is delegated to it, and runs go under it (pysandbox
    # moves this process into the leaf), not into a systemd scope per run.
    own = "--own" in a
    s = Suite(who, expect)
    cg = expect == "cgroup_v2"
    if expect == "refused":
        old_kernel(s)
        return finish(s, who, expect, out)

    @s.check("mechanisms")
    def _():
        p = run("--json", code="print(1)", extra=["--cpus", "0.5"])
        r = report(p)
        assert p.returncode == 0, f"exit {p.returncode}: {r.get('error')}"
        mem = r["limits"]["memory_bytes"]["mechanism"]
        pids = r["limits"]["pids"]["mechanism"]
        cpus = r["limits"]["cpus"]["mechanism"]
        assert mem == expect and pids == expect, f"memory {mem}, pids {pids}, expected {expect}"
        warned = any("--cpus" in w for w in r["warnings"])
        if cg:
            assert cpus == "cgroup_v2" and not r["warnings"], f"cpus {cpus}, warnings {r['warnings']}"
        else:
            # Never silent: in the report and on stderr.
            assert cpus == "none" and warned, f"cpus {cpus}, warnings {r['warnings']}"
            assert b"--cpus" in p.stderr, p.stderr.decode()
        return f"memory={mem} pids={pids} cpus={cpus} warnings={r['warnings']}"

    if own:

        @s.check("own_delegated_cgroup")
        def _():
            cg_now = open("/proc/self/cgroup").read().strip()
            assert cg_now.endswith("/pysandbox-leaf"), f"the suite is in {cg_now}"
            return cg_now

    @s.check("oom")
    def _():
        filler = "x = bytearray(512 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('survived')"
        p = run("--json", "--memory", "128M", code=filler)
        r = report(p)
        if cg:
            assert r["status"] == "oom" and p.returncode == 137, f"status {r['status']}, exit {p.returncode}"
        else:
            assert r["status"] == "exit_nonzero" and "MemoryError" in r["stderr"]["text"], r["status"]
        return f"status={r['status']} exit={p.returncode}"

    if not quick:

        @s.check("quick_start")
        def _():
            d = tempfile.mkdtemp(prefix="qs-", dir=os.environ.get("HOME", "/tmp"))
            for f in os.listdir(EXAMPLES):
                shutil.copy(os.path.join(EXAMPLES, f), d)
            p = sh([BIN, "run", "hello.py", "you"], cwd=d)
            assert p.returncode == 0, f"exit {p.returncode}: {p.stderr.decode()[-400:]}"
            assert os.path.getsize(os.path.join(d, "output", "report.json")) > 0
            return p.stdout.decode().strip()[:200]

        @s.check("pids")
        def _():
            code = (
                "import os\nn = 0\ntry:\n    for _ in range(64):\n        if os.fork() == 0:\n"
                "            import time; time.sleep(5); os._exit(0)\n        n += 1\n"
                "except OSError as e:\n    print('refused', n, e.errno)\nelse:\n    print('forked', n)\n"
            )
            p = run("--json", "--pids", "16", code=code)
            r = report(p)
            out = r["stdout"]["text"].split()
            assert out and out[0] == "refused" and int(out[1]) < 16, r["stdout"]["text"]
            return r["stdout"]["text"].strip()

        @s.check("strict_limits")
        def _():
            p = run("--strict-limits", code="print(1)", extra=["--cpus", "0.5"])
            err = p.stderr.decode().strip()
            if cg:
                assert p.returncode == 0, err
            else:
                # Refused in one line (memory by RLIMIT_AS is the first limit it names).
                assert p.returncode == 125 and "--strict-limits" in err and len(err.splitlines()) == 1, err
            return err[:200]

        @s.check("doctor")
        def _():
            p = sh([BIN, "doctor"])
            text = p.stdout.decode() + p.stderr.decode()
            assert p.returncode == 0, text[-800:]
            line = next((l for l in text.splitlines() if "limits" in l), "")
            assert "cgroup v2" in line, line
            sandbox = next((l for l in text.splitlines() if "sandbox" in l and "ran" in l), "")
            assert f"limits by {expect}" in sandbox, sandbox
            return line.strip()[:300]

        @s.check("containment")
        def _():
            code = (
                "import ctypes, os\n"
                "print(open('/proc/self/cgroup').read().strip())\n"
                "print(os.path.exists('/sys/fs/cgroup/memory.max'))\n"
                "libc = ctypes.CDLL(None, use_errno=True)\n"
                "os.makedirs('/tmp/cg', exist_ok=True)\n"
                "r = libc.mount(b'none', b'/tmp/cg', b'cgroup2', 0, None)\n"
                "print(r, ctypes.get_errno())\n"
            )
            p = run("--json", code=code)
            r = report(p)
            lines = r["stdout"]["text"].split("\n")
            assert lines[0] == "0::/", f"the sandbox sees its cgroup as {lines[0]!r}"
            assert lines[1] == "False", "cgroupfs is visible in the sandbox"
            assert lines[2].split()[0] == "-1", f"mounting cgroup2 in the sandbox: {lines[2]}"
            return "; ".join(lines[:3])

        @s.check("limits_on_the_host")
        def _():
            if not cg:
                return "no cgroup to read"
            p = subprocess.Popen(
                [BIN, "run", "--no-fs", "--memory", "200M", "--pids", "33", "--cpus", "0.25",
                 "--code", "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 30: pass"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                found = []
                for _ in range(600):
                    found = [d for d in cgroup_dirs("ps-")
                             if os.path.exists(os.path.join(d, "cgroup.procs"))
                             and open(os.path.join(d, "cgroup.procs")).read().strip()]
                    if found:
                        break
                    time.sleep(0.1)
                assert found, "no run cgroup appeared"
                d = found[0]
                vals = {f: open(os.path.join(d, f)).read().strip()
                        for f in ["memory.max", "pids.max", "cpu.max", "memory.oom.group"]}
                swap = os.path.join(d, "memory.swap.max")
                if os.path.exists(swap):
                    vals["memory.swap.max"] = open(swap).read().strip()
                assert vals["memory.max"] == str(200 << 20), vals
                assert vals["pids.max"] == "33" and vals["cpu.max"] == "25000 100000", vals
                assert vals["memory.oom.group"] == "1", vals
                # The quota holds: CPU used over 2 s of wall time, from cpu.stat.
                def usage():
                    st = dict(l.split() for l in open(os.path.join(d, "cpu.stat")))
                    return int(st["usage_usec"]), int(st["nr_throttled"])
                time.sleep(1)
                u0, _ = usage()
                t0 = time.monotonic()
                time.sleep(2)
                u1, throttled = usage()
                share = (u1 - u0) / 1e6 / (time.monotonic() - t0)
                vals["cpu_share"] = round(share, 2)
                vals["nr_throttled"] = throttled
                assert share < 0.25 * 1.5 and throttled > 0, vals
                if who.startswith("root") and "systemd" in open("/proc/1/comm").read():
                    assert "/pysandbox.slice/" in d or "Delegate" in who or "delegated" in who, d
                return f"{d}: {vals}"
            finally:
                p.kill()
                p.wait()

        @s.check("parallel_runs")
        def _():
            # Runs that make, fill and remove cgroups side by side (root's shared parent
            # is removed by whichever run leaves it empty).
            procs = [subprocess.Popen([BIN, "run", "--json", "--no-fs", "--code", "print(7)"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                     for _ in range(6)]
            outs = [p.communicate(timeout=300) for p in procs]
            mechs = []
            for p, (o, e) in zip(procs, outs):
                assert p.returncode == 0, e.decode()[-300:]
                r = json.loads(o)
                assert r["stdout"]["text"] == "7\n", r
                mechs.append(r["limits"]["memory_bytes"]["mechanism"])
            assert all(m == expect for m in mechs), mechs
            return f"6 parallel runs: {mechs[0]}"

        @s.check("sigkill_leftovers")
        def _():
            marker = f"sleeper-{os.getpid()}"
            log = tempfile.TemporaryFile()
            p = subprocess.Popen(
                [BIN, "run", "--no-fs", "--code", f"import time; time.sleep(60)  # {marker}"],
                stdout=log, stderr=subprocess.STDOUT,
            )

            def sleeper_alive():
                # The sandbox's python (pysandbox and libcontainer's helpers carry the
                # marker in their command lines too).
                for pid in filter(str.isdigit, os.listdir("/proc")):
                    try:
                        if (marker.encode() in open(f"/proc/{pid}/cmdline", "rb").read()
                                and open(f"/proc/{pid}/comm").read().startswith("python")):
                            return True
                    except OSError:
                        pass
                return False

            for _ in range(600):
                if sleeper_alive():
                    break
                time.sleep(0.1)
            if not sleeper_alive():
                p.kill()
                p.wait()
                log.seek(0)
                raise AssertionError(f"the sandbox never started: {log.read().decode()[-600:]}")
            p.send_signal(signal.SIGKILL)
            p.wait()
            for _ in range(50):
                if not sleeper_alive():
                    break
                time.sleep(0.1)
            assert not sleeper_alive(), "the sandbox outlived a SIGKILLed pysandbox"
            # The next run sweeps what the killed one left.
            q = run(code="print(1)")
            assert q.returncode == 0, q.stderr.decode()
            time.sleep(1)
            left = cgroup_dirs("ps-") + cgroup_dirs("pysandbox-ps-")
            assert not left, f"left behind: {left}"
            return "sandbox died with pysandbox; no cgroup left after the next run"

    if "--timing" in a:

        @s.check("cold_start")
        def _():
            # The median of 5 runs (cargo xtask vm --timing); xtask vm prints it as a ratio to the identity without
            # cgroups in the same boot (what the cgroup, and a systemd scope, cost).
            walls = []
            for _ in range(5):
                t = time.monotonic()
                p = run(code="pass")
                walls.append(time.monotonic() - t)
                assert p.returncode == 0, p.stderr.decode()
            walls.sort()
            return f"median_ms={walls[2] * 1000:.0f}"

    @s.check("nothing_left_behind")
    def _():
        time.sleep(0.5)
        left = cgroup_dirs("ps-") + cgroup_dirs("pysandbox-ps-")
        if os.path.isdir("/sys/fs/cgroup/pysandbox"):
            left.append("/sys/fs/cgroup/pysandbox")
        assert not left, f"left behind: {left}"
        # systemd's own unit for root's scopes; it stops it once unused.
        slice_ = os.path.isdir("/sys/fs/cgroup/pysandbox.slice")
        return "no run cgroup, scope or shared parent left" + ("; pysandbox.slice present" if slice_ else "")

    finish(s, who, expect, out)


def old_kernel(s):
    """A kernel below the minimum: `run` and `doctor` refuse it in one line, at once,
    before any image work."""

    @s.check("run_refuses_old_kernel")
    def _():
        t = time.monotonic()
        p = run(code="print(1)")
        secs = time.monotonic() - t
        err = p.stderr.decode().strip()
        assert p.returncode == 125, f"exit {p.returncode}: {err}"
        assert len(err.splitlines()) == 1 and "older than 5.12" in err, err
        images = os.path.join(os.environ.get("HOME", "/"), ".local/share/pysandbox/store/rootfs")
        assert not os.path.exists(images) or not os.listdir(images), f"an image was built first: {images}"
        assert secs < 10, f"{secs:.1f} s"
        return f"{secs:.2f} s: {err}"

    @s.check("doctor_refuses_old_kernel")
    def _():
        p = sh([BIN, "doctor"])
        text = p.stdout.decode().strip()
        lines = [l for l in text.splitlines() if not l.strip().startswith("fix:")]
        assert p.returncode == 1, text
        assert len(lines) == 1 and lines[0].startswith("FAIL kernel"), text
        return text.replace("\n", " | ")


def finish(s, who, expect, out):
    own_dir = "/sys/fs/cgroup" + open("/proc/self/cgroup").read().strip()[3:]
    xattrs = {}
    for parent in [own_dir, os.path.dirname(own_dir)]:
        try:
            xattrs[parent] = {k: os.getxattr(parent, k).decode() for k in os.listxattr(parent)}
        except OSError as e:
            xattrs[parent] = str(e)
    res = {
        "who": who,
        "xattrs": xattrs,
        "expect": expect,
        "uid": os.getuid(),
        "cgroup": open("/proc/self/cgroup").read().strip(),
        "checks": s.checks,
    }
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    sys.exit(0 if all(c["ok"] for c in s.checks) else 1)


if __name__ == "__main__":
    main()
