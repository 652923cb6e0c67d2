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
            def script_running(d):
                # The limits are complete once the script runs (while the sandbox is
                # created in the cgroup, the driver's room is still in them).
                try:
                    pids = open(os.path.join(d, "cgroup.procs")).read().split()
                except OSError:
                    return False
                for pid in pids:
                    try:
                        if open(f"/proc/{pid}/comm").read().startswith("python"):
                            return True
                    except OSError:
                        pass
                return False

            try:
                found = []
                for _ in range(600):
                    found = [d for d in cgroup_dirs("ps-") if script_running(d)]
                    if found:
                        break
                    time.sleep(0.1)
                assert found, "no run cgroup with the script in it appeared"
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

    if cg:

        @s.check("born_in_its_cgroup")
        def _():
            # Seen from outside: the sandbox's init (pid 1 inside) is in the run's cgroup
            # while the script runs, and nothing else of pysandbox's is; pids.max is the
            # run's limit again (it is one higher while the sandbox is created).
            p = subprocess.Popen(
                [BIN, "run", "--no-fs", "--pids", "7", "--code", "import time; time.sleep(30)"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                init = None
                for _ in range(600):
                    for pid in filter(str.isdigit, os.listdir("/proc")):
                        try:
                            if (open(f"/proc/{pid}/comm").read().strip() == "pysandbox-init"
                                    and open(f"/proc/{pid}/status").read().find(f"PPid:\t{p.pid}\n") >= 0):
                                init = pid
                        except OSError:
                            pass
                    if init:
                        break
                    time.sleep(0.1)
                assert init, "no sandbox init appeared"
                line = next(l for l in open(f"/proc/{init}/cgroup").read().splitlines() if l.startswith("0::"))
                d = "/sys/fs/cgroup" + line[3:]
                assert os.path.basename(d).startswith("ps-"), f"the init is in {line}"
                # The script runs once the interpreter is there too, the init's child, and
                # nothing else is (the init is named while the sandbox is created, when
                # the driver and libcontainer's intermediate are in the cgroup too).
                def ppid(pid):
                    try:
                        return open(f"/proc/{pid}/status").read().split("PPid:\t", 1)[1].split()[0]
                    except (OSError, IndexError):
                        return None

                for _ in range(600):
                    procs = open(os.path.join(d, "cgroup.procs")).read().split()
                    if len(procs) >= 2 and all(q == init or ppid(q) == init for q in procs):
                        break
                    time.sleep(0.1)
                assert init in procs, f"{d}: {procs}"
                pids_max = open(os.path.join(d, "pids.max")).read().strip()
                assert pids_max == "7", f"pids.max {pids_max}"
                mine = open(f"/proc/{p.pid}/cgroup").read().strip()
                assert not mine.endswith(os.path.basename(d)), f"pysandbox is in the run's cgroup: {mine}"
                return f"init {init}: {line}; pysandbox: {mine}; in the run's cgroup: {procs}; pids.max {pids_max}"
            finally:
                # Relayed to the sandbox: pysandbox ends the run and removes its cgroup
                # (a SIGKILL would leave that to the next run).
                p.terminate()
                try:
                    p.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

        @s.check("smallest_limits")
        def _():
            # The least --pids and --memory: the init and the interpreter, nothing else
            # counted or charged once the script runs (rootless, RLIMIT_NPROC also counts
            # pysandbox's own processes: it is raised by as many).
            least = "2"
            p = run("--json", "--pids", least, "--memory", "16M", code="print(1)")
            r = report(p)
            assert p.returncode == 0 and r["stdout"]["text"] == "1\n", f"exit {p.returncode}: {r.get('error')}"
            return f"--pids {least} --memory 16M runs"

        if who == "root":

            @s.check("clone3_filtered")
            def _():
                # Under a seccomp filter that answers clone3 with ENOSYS (as some container
                # runtimes' profiles do), the sandbox is not born in its cgroup but moved
                # in by libcontainer: still in it, whose OOM killer ends the run.
                filler = "x = bytearray(512 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('survived')"
                p = sh([sys.executable, "-c", NO_CLONE3, BIN, "run", "--json", "--memory", "128M",
                        "--no-fs", "--code", filler])
                r = report(p)
                assert r["status"] == "oom" and p.returncode == 137, f"status {r['status']}, exit {p.returncode}: {r.get('error')}"
                return f"status={r['status']} exit={p.returncode}"

        if who == "root" and not os.path.isdir("/run/systemd/system"):

            @s.check("failed_create_is_reported")
            def _():
                # Root's shared parent capped at one process: the sandbox cannot be created
                # (the process that creates it is the one); the error reaches the user,
                # and nothing is left.
                top = "/sys/fs/cgroup/pysandbox"
                os.makedirs(top, exist_ok=True)
                with open(os.path.join(top, "pids.max"), "w") as f:
                    f.write("1")
                try:
                    t = time.monotonic()
                    p = run(code="print(1)")
                    secs = time.monotonic() - t
                finally:
                    if os.path.isdir(top):
                        with open(os.path.join(top, "pids.max"), "w") as f:
                            f.write("max")
                err = p.stderr.decode().strip()
                assert p.returncode == 125 and "creating the sandbox" in err, f"exit {p.returncode}: {err}"
                assert "during cleanup" not in err and "died" not in err, err
                left = cgroup_dirs("ps-")
                assert not left, f"left behind: {left}"
                return f"{secs:.1f} s: {err[:300]}"

    if "--timing" in a:

        @s.check("cold_start")
        def _():
            # N cold runs (cargo xtask vm --timing); xtask vm prints the medians as ratios
            # to the identity without cgroups in the same boot (what the cgroup, and a
            # systemd scope, cost): the whole run, and the creation of the container
            # (pysandbox's timing marks "spec saved" to "container built": where the
            # sandbox enters its cgroup).
            n = 21
            bins = [("", BIN)]
            if os.path.exists(BIN + "-base"):
                # cargo xtask vm --baseline: another build, run for run beside this one.
                bins.append(("base_", BIN + "-base"))
            walls = {pre: [] for pre, _ in bins}
            builds = {pre: [] for pre, _ in bins}
            forks = []
            every = {pre: {} for pre, _ in bins}
            for _ in range(n):
                for pre, b in bins:
                    t = time.monotonic()
                    p = sh([b, "run", "--log-level", "pysandbox::timing=debug", "--no-fs", "--code", "pass"])
                    walls[pre].append(time.monotonic() - t)
                    assert p.returncode == 0, p.stderr.decode()
                    marks = {}
                    for l in p.stderr.decode().splitlines():
                        if "pysandbox::timing: " in l and l.endswith(" us"):
                            k, v = l.split("pysandbox::timing: ", 1)[1].rsplit(": ", 1)
                            marks[k] = int(v[:-3])
                    builds[pre].append((marks["container built"] - marks["spec saved"]) / 1000)
                    for k, v in marks.items():
                        every[pre].setdefault(k, []).append(v / 1000)
                    if "driver forked" in marks:
                        forks.append((marks["driver forked"] - marks["spec saved"]) / 1000)
            out = []
            if forks:
                # A build with a driver born in the run's cgroup: its fork (and what comes
                # before it), the cost that replaces the move.
                forks.sort()
                out.append(f"driver_fork_ms={forks[len(forks) // 2]:.1f}")
            if who == "root":
                out.append(f"migration_ms={migration_ms():.2f}")
            for pre, _ in bins:
                w, c = sorted(walls[pre]), sorted(builds[pre])
                out.append(f"{pre}median_ms={w[n // 2] * 1000:.0f} {pre}build_ms={c[n // 2]:.1f}")
            if len(bins) > 1:
                # Run for run (each pair one after the other, so load drifts cancel): the
                # median difference of container creation, this build minus the baseline.
                d = sorted(a - b for a, b in zip(builds[""], builds["base_"]))
                out.append(f"paired_build_diff_ms={d[n // 2]:.1f}")
            # Each timing mark's median (ms from the run's start), per build, in the JSON.
            MARKS.update({pre or "this": {k: sorted(v)[len(v) // 2] for k, v in m.items()} for pre, m in every.items()})
            return " ".join(out) + f" n={n}"

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


# Installs a seccomp filter that fails clone3 with ENOSYS (x86_64: syscall 435), then
# execs argv[1:].
NO_CLONE3 = """
import ctypes, os, struct, sys
code = [(0x20, 0, 0, 0), (0x15, 0, 1, 435), (0x06, 0, 0, 0x00050000 | 38), (0x06, 0, 0, 0x7fff0000)]
buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *c) for c in code))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(code), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
os.execv(sys.argv[1], sys.argv[1:])
"""


def migration_ms(n=21):
    """The median time the kernel takes to move a process between two cgroups (a write
    to cgroup.procs): what a sandbox born in its cgroup no longer waits for. The moves are
    0.2 s apart, as runs are: a move right after another one skips the RCU grace period
    the first one waited for."""
    top = "/sys/fs/cgroup"
    dirs = [os.path.join(top, f"psb-move-{i}") for i in (0, 1)]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    child = subprocess.Popen(["sleep", "300"])
    took = []
    try:
        for i in range(n):
            time.sleep(0.2)
            with open(os.path.join(dirs[i % 2], "cgroup.procs"), "w") as f:
                t = time.monotonic()
                f.write(str(child.pid))
                f.flush()
                took.append(time.monotonic() - t)
    finally:
        child.kill()
        child.wait()
        for d in dirs:
            os.rmdir(d)
    took.sort()
    return took[n // 2] * 1000


MARKS = {}


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
        "marks": MARKS,
    }
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    sys.exit(0 if all(c["ok"] for c in s.checks) else 1)


if __name__ == "__main__":
    main()
