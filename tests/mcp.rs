//! `pysandbox mcp` driven by the official MCP Python SDK (`mcp` from PyPI) over stdio,
//! and matplotlib figures coming back as PNG, from a session and through MCP, in an
//! image built with `image build`. Needs a package index (PYSANDBOX_TEST_NO_INDEX=1
//! skips). One test in this binary: it points the image store at its own folder.

mod common;

use std::time::Duration;

use common::*;

const CLIENT: &str = r#"
import asyncio, sys
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

def texts(res):
    return "".join(c.text for c in res.content if c.type == "text")

async def main(binary, image):
    params = StdioServerParameters(command=binary, args=["mcp", "--timeout", "20s", "--image", image],
                                   env=dict(__import__("os").environ))
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            names = sorted(t.name for t in (await s.list_tools()).tools)
            assert names == ["close_session", "open_session", "run_python_code"], names
            res = await s.call_tool("run_python_code", {"python_code": "print('hi')\n6*7"})
            assert not res.is_error and texts(res) == "stdout:\nhi\nresult:\n42\n", texts(res)
            res = await s.call_tool("run_python_code", {"python_code": "x + len(y)", "global_variables": {"x": 1, "y": [1, 2]}})
            assert "result:\n3\n" in texts(res), texts(res)
            res = await s.call_tool("run_python_code", {"python_code": "import os\nos.listdir('/usr/app/data'), os.getuid()"})
            assert "result:\n([], 1000)" in texts(res), texts(res)
            sid = texts(await s.call_tool("open_session", {}))
            await s.call_tool("run_python_code", {"python_code": "counter = 10", "session_id": sid})
            res = await s.call_tool("run_python_code", {"python_code": "counter += 1\ncounter", "session_id": sid})
            assert "result:\n11\n" in texts(res), texts(res)
            res = await s.call_tool("run_python_code", {"python_code": "1/0", "session_id": sid})
            assert res.is_error and "ZeroDivisionError" in texts(res), texts(res)
            res = await s.call_tool("run_python_code", {"python_code": "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nNone", "session_id": sid})
            images = [c for c in res.content if c.type == "image"]
            assert len(images) == 1 and images[0].mime_type == "image/png", res.content
            assert images[0].data.startswith("iVBORw0KGgo"), images[0].data[:20]
            assert not (await s.call_tool("close_session", {"session_id": sid})).is_error
            res = await s.call_tool("run_python_code", {"python_code": "1", "session_id": sid})
            assert res.is_error and "no session" in texts(res), texts(res)
    print("ok")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[test]
fn mcp_sdk_client_and_matplotlib_png() {
    if no_index() {
        return;
    }
    let store = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this binary sets it before starting any thread.
    unsafe { std::env::set_var("XDG_DATA_HOME", store.path()) };
    let dir = workdir(me());
    put(
        dir.path(),
        "mpl.yaml",
        "name: mpl\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n      - matplotlib==3.9.2\n",
    );
    // As this process, with its environment (XDG_DATA_HOME): the library's sessions
    // below find the image there.
    let o = std::process::Command::new(bin())
        .args(["image", "build", "mpl.yaml"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_code(&o, 0, "image build with matplotlib");

    // A session of the library: a figure comes back as a PNG result.
    let sandbox = pysandbox::Sandbox::with_helper(bin()).image("mpl");
    let mut s = pysandbox::Session::open(&sandbox, Duration::from_secs(120)).unwrap();
    let e = s
        .execute(
            "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.title('t')\nNone",
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(e.error.is_none(), "{e:?}");
    let png = e
        .results
        .iter()
        .find_map(|r| r["png"].as_str())
        .unwrap_or("");
    assert!(png.starts_with("iVBORw0KGgo"), "{:?}", e.results);
    s.close();

    // The MCP SDK from PyPI, in a venv, talking to `pysandbox mcp` over stdio.
    let venv = tempfile::tempdir().unwrap();
    let python = venv_with(venv.path(), &["mcp==2.3.0"]);
    let o = python_script(&python, CLIENT, &[bin().to_str().unwrap(), "mpl"]);
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n");
    // The server ended its sessions when the client went away.
    assert!(wait_gone("_pysandbox_session", Duration::from_secs(20)).is_empty());
}
