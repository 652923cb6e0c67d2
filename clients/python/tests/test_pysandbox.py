"""The Python client against the real pysandbox binary and a real `pysandbox serve` on
loopback (PYSANDBOX_BIN names the binary)."""

import os
import socket
import subprocess
import time

import pytest

import pysandbox

BIN = os.environ.get("PYSANDBOX_BIN", "pysandbox")
TOKEN = "python-client-token-0123456789"


def test_run_through_the_cli(tmp_path):
    r = pysandbox.run("import sys\nprint(sys.argv[1:], input())", args=["a", "b"], stdin="in", binary=BIN)
    assert r.ok and r.stdout == "['a', 'b'] in\n"
    r = pysandbox.run("import sys; sys.exit(3)", binary=BIN)
    assert r.status == "exit_nonzero" and r.exit_code == 3
    r = pysandbox.run("while True: pass", timeout=0.5, binary=BIN)
    assert r.timed_out
    script = tmp_path / "s.py"
    script.write_text("print('from a file')\n")
    assert pysandbox.run(path=str(script), binary=BIN).stdout == "from a file\n"
    with pytest.raises(pysandbox.PySandboxError):
        pysandbox.run("1", image="/nonexistent/image", binary=BIN)
    with pytest.raises(ValueError):
        pysandbox.run()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    (d / "tokens").write_text(TOKEN + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen(
        [BIN, "serve", "--pool", "2", "--listen", "127.0.0.1:%d" % port, "--token-file", str(d / "tokens")],
        stderr=subprocess.DEVNULL,
    )
    client = pysandbox.Client("http://127.0.0.1:%d" % port, token=TOKEN)
    deadline = time.time() + 120
    while True:
        try:
            if client.health()["pool"]["idle"] >= 1:
                break
        except pysandbox.PySandboxError:
            pass
        assert time.time() < deadline, "serve did not start"
        time.sleep(0.1)
    yield client
    p.terminate()
    assert p.wait(60) == 0


def test_client_run(server):
    r = server.run(env={"K": "v"},
                   files={"main.py": "import os\nprint(os.environ['K'], open('d.txt').read())", "d.txt": b"bytes"},
                   script="main.py")
    assert r.ok and r.stdout == "v bytes\n", r
    r = server.run("print(input())", stdin="hello")
    assert r.stdout == "hello\n"
    assert server.run("while True: pass", timeout=0.5).timed_out


def test_client_errors(server):
    bad = pysandbox.Client(server.url, token="wrong-token-wrong-token")
    with pytest.raises(pysandbox.PySandboxError) as e:
        bad.run("1")
    assert e.value.status == 401
    with pytest.raises(pysandbox.PySandboxError) as e:
        server.run("1", timeout=10**6)
    assert e.value.status == 400 and "timeout" in e.value.message


def test_sessions(server):
    with server.session() as s:
        s.run_code("x = 41")
        ex = s.run_code("print('out')\nx + 1")
        assert ex.text == "42" and ex.logs.stdout == ["out\n"] and ex.error is None
        ex = s.run_code("raise KeyError('k')")
        assert ex.error.name == "KeyError"
        assert s.run_code("items[1]", globals={"items": [1, 2]}).text == "2"
        s.put_file("a.bin", b"\x00\x01")
        s.run_code("open('b.bin', 'wb').write(open('a.bin', 'rb').read() * 2)")
        assert s.get_file("b.bin") == b"\x00\x01\x00\x01"
        assert s.run_code("1", timeout=5).execution_count == 6
    with pytest.raises(pysandbox.SessionExpired):
        s.run_code("x")
