"""Kernels get their keys in servers started as a user starts them, with the installed
configuration only: ``jupyter server`` + REST, ``jupyter lab``, ``jupyter notebook``.

Each test starts real servers (subprocesses), creates kernels through the REST API
with the token and no cookie (as scripts, nbclient through a server and the first
browser request do), and runs code in them over the kernel websocket.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jupyter_vkeys.server_extension.identity import os_user
from servers import JupyterProcess, isolated_env, result_of

KERNEL_CHECK = textwrap.dedent("""
    import os, json, openai, anthropic
    reply = openai.OpenAI(max_retries=0).chat.completions.create(
        model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    message = anthropic.Anthropic(max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    print("RESULT" + json.dumps({
        "openai_tokens": reply.usage.completion_tokens,
        "anthropic_tokens": message.usage.output_tokens,
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("OPENAI", "ANTHROPIC", "VKEYS", "JPY_SESSION"))
                or k.lower() == "no_proxy"},
        "has_real_key": any("REAL-SECRET" in v for v in os.environ.values()),
    }))
""")

ENV_ONLY = ('import os, json; print("RESULT" + json.dumps({k: v for k, v in os.environ.items() '
            'if k.startswith(("OPENAI", "VKEYS"))}))')


def _events(data_dir: Path) -> list[dict]:
    from jupyter_vkeys.warehouse.readers import read_table
    return read_table("events", data_dir).to_pylist()


@pytest.mark.parametrize("command", ["server", "lab", "notebook"])
def test_rest_kernels_get_keys_and_one_identity(command, tmp_path):
    """POST /api/sessions and POST /api/kernels with the token and no cookie: every kernel
    gets a child key of ONE personal key (the OS user's), reaches the gateway past any
    proxy, and its calls are attributed to user, kernel and notebook."""
    env = isolated_env(tmp_path, OPENAI_API_KEY="sk-REAL-SECRET-in-server-env",
                       HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    (tmp_path / "root" / "reports").mkdir(parents=True)
    (tmp_path / "root" / "reports" / ".vkeys.toml").write_text('project = "reporting"\n')
    with JupyterProcess(command, tmp_path, env=env) as server:
        session = server.start_session("reports/q3.ipynb")
        kernel_id = session["kernel"]["id"]
        checked = server.execute(kernel_id, KERNEL_CHECK)
        result = result_of(checked)
        other = server.start_session("scratch.ipynb")
        bare = server.start_kernel()
        bare_env = result_of(server.execute(bare["id"], ENV_ONLY))
        other_env = result_of(server.execute(other["kernel"]["id"], ENV_ONLY))
        identities = {server.request("GET", "/api/me")[1]["identity"]["username"]
                      for _ in range(3)}
        refused, _ = server.request("POST", "/api/kernels", {"name": "python3"}, auth=False)
        _, listed = server.request("GET", "/vkeys/api/keys")
        events = _events(server.data_dir)
        log = server.log()

    assert identities == {os_user()}, "every token request is the one personal user"
    assert refused == 403, "unauthenticated requests stay refused"
    env = result["env"]
    assert result["openai_tokens"] == 5 and result["anthropic_tokens"] == 4
    assert env["OPENAI_API_KEY"].startswith("vk-") and not result["has_real_key"]
    assert env["ANTHROPIC_API_KEY"] == env["OPENAI_API_KEY"]
    assert env["OPENAI_BASE_URL"] == env["OPENAI_API_BASE"] == env["VKEYS_URL"] + "/openai/v1"
    assert env["OPENAI_BASE_URL"].startswith("http://127.0.0.1:")
    assert "127.0.0.1" in env["NO_PROXY"].split(",") and "127.0.0.1" in env["no_proxy"]
    assert env["JPY_SESSION_NAME"].endswith("reports/q3.ipynb")
    assert bare_env["OPENAI_API_KEY"].startswith("vk-")
    assert len({env["OPENAI_API_KEY"], bare_env["OPENAI_API_KEY"],
                other_env["OPENAI_API_KEY"]}) == 3, "one key per kernel"

    keys = listed["keys"]
    personal = [k for k in keys if k.get("metadata", {}).get("kind") == "user"]
    assert [k["owner"] for k in personal] == [os_user()], "one personal key, one budget"
    by_id = {k["id"]: k for k in keys}
    assert by_id[bare_env["VKEYS_KEY_ID"]]["parent_id"] == personal[0]["id"]
    assert by_id[other_env["VKEYS_KEY_ID"]]["parent_id"] == personal[0]["id"]
    assert by_id[env["VKEYS_KEY_ID"]]["project"] == "reporting"

    ok = [e for e in events if e["status"] == "ok"]
    assert {e["operation"] for e in ok} == {"chat.completions", "messages"}
    for event in ok:
        assert (event["user"], event["kernel_id"], event["notebook_path"], event["project"]) \
            == (os_user(), kernel_id, "reports/q3.ipynb", "reporting")
    # Cost per cell under this server too: one line under the calling cell, and both
    # calls of that cell carry its execution count in the warehouse.
    lines = [d.get("text/plain", "") for d in checked["displays"]
             if d.get("text/plain", "").startswith("vkeys")]
    assert len(lines) == 1 and "2 calls" in lines[0], checked["displays"]
    assert len({e["execution_count"] for e in ok}) == 1 and ok[0]["execution_count"]
    assert "local-provisioner" not in log.split("Kernel started")[0]
    assert "REAL-SECRET" not in log and "Traceback" not in log, log[-3000:]


def _kernelspec(data_dir: Path, name: str, argv: list[str], **metadata) -> None:
    folder = data_dir / "kernels" / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps({
        "argv": argv, "display_name": name, "language": name, "metadata": metadata}))


def test_kernelspecs_with_own_provisioner_and_other_languages(tmp_path):
    """A kernelspec naming its own provisioner keeps it (one log line says it gets no key);
    a kernel of another language (not ipykernel) gets its key and variables like any."""
    env = isolated_env(tmp_path)
    data = Path(env["JUPYTER_DATA_DIR"])
    dump = tmp_path / "other-language-env.json"
    # A "kernel" that is not ipykernel: it writes the environment it was given, then idles.
    _kernelspec(data, "notpython", [sys.executable, "-c", (
        "import json, os, sys, time; json.dump(dict(os.environ), open(sys.argv[1], 'w')); "
        "time.sleep(120)"), str(dump), "{connection_file}"])
    _kernelspec(data, "ownprov", [sys.executable, "-m", "ipykernel_launcher", "-f",
                                  "{connection_file}"],
                kernel_provisioner={"provisioner_name": "local-provisioner"})
    with JupyterProcess("server", tmp_path, env=env) as server:
        own = server.start_kernel("ownprov")
        own_env = result_of(server.execute(own["id"], ENV_ONLY))
        server.start_kernel("notpython")
        deadline = time.time() + 30
        while not dump.exists() and time.time() < deadline:
            time.sleep(0.1)
        log = server.log()
    assert "OPENAI_API_KEY" not in own_env and "VKEYS_URL" not in own_env
    notices = [line for line in log.splitlines() if own["id"] in line and "no virtual key" in line]
    assert len(notices) == 1 and "'local-provisioner' named by its kernelspec" in notices[0], log
    other = json.loads(dump.read_text())
    assert other["OPENAI_API_KEY"].startswith("vk-") and other["VKEYS_URL"]
    assert other["ANTHROPIC_BASE_URL"].endswith("/vkeys/anthropic")


def test_inject_kernel_keys_off_and_named_user(tmp_path):
    """``c.VKeysApp.inject_kernel_keys = False`` leaves kernels keyless (and still without
    provider keys); the VKeysApp option naming the personal user names it."""
    env = isolated_env(tmp_path, OPENAI_API_KEY="sk-REAL-SECRET-in-server-env")
    with JupyterProcess("server", tmp_path, "--VKeysApp.inject_kernel_keys=False",
                        "--VKeysApp.personal_user=ada",  # as-installed-ok: tests the option
                        env=env) as server:
        kernel = server.start_kernel()
        kernel_env = result_of(server.execute(kernel["id"], ENV_ONLY))
        _, me = server.request("GET", "/api/me")
        log = server.log()
    assert kernel_env == {}, "no key, no base URL, and the server's provider key removed"
    assert me["identity"]["username"] == "ada"
    assert "kernel keys are off" in log


def test_kernels_of_a_configured_default_provisioner_are_left_alone(tmp_path):
    """A user who configured another default provisioner keeps it, and is told why their
    kernels get no key."""
    env = isolated_env(tmp_path)
    with JupyterProcess(
            "server", tmp_path,
            "--KernelProvisionerFactory.default_provisioner_name=local-provisioner",  # as-installed-ok: tests that a user's own choice is kept
            env=env) as server:
        kernel = server.start_kernel()
        kernel_env = result_of(server.execute(kernel["id"], ENV_ONLY))
        log = server.log()
    assert "OPENAI_API_KEY" not in kernel_env
    assert "default kernel provisioner is configured as 'local-provisioner'" in log


CONFIG_ONLY_TESTS_SET = re.compile(  # as-installed-ok: the pattern this check looks for
    r"KernelProvisionerFactory|default_provisioner_name|JUPYTER_DEFAULT_PROVISIONER_NAME|"  # as-installed-ok: the pattern
    r"identity_provider_class|IdentityProvider\.|personal_user")  # as-installed-ok: the pattern


def test_no_test_configures_what_an_install_does_not():
    """A line of a test that configures a provisioner or an identity provider proves nothing
    about an install, unless it tests that very option and says so with a comment
    ``# as-installed-ok: <why>``."""
    flagged = []
    for path in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if CONFIG_ONLY_TESTS_SET.search(line) and not re.search(
                    r"#\s*as-installed-ok:\s*\S", line):
                flagged.append(f"{path.name}:{number}: {line.strip()}")
    assert not flagged, "\n".join(flagged)
