"""Authorization matrix of the admin API inside a real `jupyter server` (issue 11): every
admin route x {no credentials, a wrong token, a virtual key, a Jupyter user who is not a
gateway admin, an admin}. Jupyter's own authentication decides who the caller is; a
virtual key opens the data plane and ``/api/me``, never an admin route."""

from __future__ import annotations

import getpass
import json
import urllib.error
import urllib.request

from servers import JupyterProcess, isolated_env

from jupyter_vkeys.gateway.openapi import openapi_document

ADMIN_OPERATIONS = [(path, method.upper()) for path, item in openapi_document()["paths"].items()
                    for method, op in item.items()
                    if method != "parameters" and op.get("security") == [{"adminToken": []}]]


def call(server: JupyterProcess, method: str, path: str, headers: dict[str, str]
         ) -> tuple[int, str]:
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    request = urllib.request.Request(server.base + "/vkeys/api" + path, data=body,
                                     method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def concrete(path: str, key_id: str) -> str:
    return path.replace("{id}", key_id).replace("{scope}", "team:ml")


def _kernel_key(server: JupyterProcess) -> tuple[str, str]:
    kernel = server.start_session("nb.ipynb")["kernel"]["id"]
    out = server.execute(kernel, "import os; print(os.environ['OPENAI_API_KEY'], "
                                 "os.environ['VKEYS_KEY_ID'])")
    token, key_id = out["stdout"].split()  # what the cell printed (stderr may say more)
    return token, key_id


def test_admin_matrix_in_a_jupyter_server(tmp_path):
    me = getpass.getuser()
    results: dict[str, dict[tuple[str, str], int]] = {}
    # The admin: a personal server's one user, with no admin list configured.
    with JupyterProcess("server", tmp_path / "a", env=isolated_env(tmp_path / "a")) as server:
        vkey, key_id = _kernel_key(server)
        # Before the matrix: the admin's row revokes and rotates this very key.
        me_status, me_body = call(server, "GET", "/me", {"Authorization": f"Bearer {vkey}"})
        kernel_key_id = key_id
        for who, headers in {"nobody": {}, "wrong token": {"Authorization": "token nope"},
                             "virtual key": {"Authorization": f"Bearer {vkey}"},
                             "virtual key as x-api-key": {"x-api-key": vkey},
                             "admin": {"Authorization": f"token {server.token}"}}.items():
            results[who] = {(p, m): call(server, m, concrete(p, key_id), headers)[0]
                            for p, m in ADMIN_OPERATIONS}
    # A Jupyter user of this server who is not a gateway admin (c.VKeysApp.admin_users).
    root = tmp_path / "b"
    with JupyterProcess("server", root, "--VKeysApp.admin_users=['someone-else']",
                        env=isolated_env(root)) as server:
        _, key_id = _kernel_key(server)
        denied = {(p, m): call(server, m, concrete(p, key_id),
                               {"Authorization": f"token {server.token}"})
                  for p, m in ADMIN_OPERATIONS}

    for who in ("nobody", "wrong token", "virtual key", "virtual key as x-api-key"):
        leaked = {op: status for op, status in results[who].items() if status < 400}
        assert not leaked, (who, leaked)
        assert all(status in (401, 403) for status in results[who].values()), \
            (who, results[who])
    assert all(status < 500 for status in results["admin"].values()), results["admin"]
    assert results["admin"][("/keys", "GET")] == 200
    assert all(status == 403 for status, _ in denied.values()), denied
    _, text = denied[("/keys", "GET")]
    assert "not a jupyter-vkeys admin" in text and me in text
    assert me_status == 200 and json.loads(me_body)["id"] == kernel_key_id
