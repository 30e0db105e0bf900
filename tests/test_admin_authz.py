"""Authorization matrix of the standalone admin API: every admin route x {no credentials,
a wrong token, a virtual key (as Bearer and as x-api-key), the admin token}. A virtual key
never reaches an admin route or another key's data; ``/api/me`` shows only the caller's
own scopes (its key, its parent and its user in full; team and project as limits only;
never ``global``).

Routes come from the OpenAPI document the gateway serves, so a route added there is
tested here too.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from jupyter_vkeys.gateway.openapi import openapi_document

ADMIN_OPERATIONS = [(path, method.upper()) for path, item in openapi_document()["paths"].items()
                    for method, op in item.items()
                    if method != "parameters" and op.get("security") == [{"adminToken": []}]]


def call(gw, method: str, path: str, headers: dict[str, str], body=None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(gw.url + "/api" + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def world(gateway):
    """Two users' keys (one with a kernel child), team and global policies with spend."""
    alice_token, alice = gateway.create_key(owner="alice", team="ml", project="churn",
                                            budgets=[{"usd": 5, "period": "month"}])
    child_token, child = gateway.create_key(parent_id=alice["id"], alias="kernel")
    bob_token, bob = gateway.create_key(owner="bob", team="ml", project="churn")
    for scope, fields in (("team:ml", {"rpm": 100, "budgets": [{"usd": 50, "period": "day"}]}),
                          ("project:churn", {"budgets": [{"usd": 20, "period": "total"}]}),
                          ("user:alice", {"tpm": 10000}), ("global", {"rpm": 1000})):
        assert gateway.admin("PUT", f"/policies/{scope}", fields)[0] == 200
    import openai
    client = openai.OpenAI(api_key=bob_token, base_url=gateway.url + "/openai/v1",
                           max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", max_tokens=20,
                                   messages=[{"role": "user", "content": "bob spends"}])
    return {"alice": (alice_token, alice), "child": (child_token, child),
            "bob": (bob_token, bob)}


def _concrete(path: str, key_id: str) -> str:
    return path.replace("{id}", key_id).replace("{scope}", "team:ml")


@pytest.mark.parametrize("path,method", ADMIN_OPERATIONS,
                         ids=[f"{m} {p}" for p, m in ADMIN_OPERATIONS])
def test_admin_routes_refuse_everyone_but_the_admin(gateway, world, path, method):
    token, record = world["alice"]
    callers = {"none": {}, "wrong": {"Authorization": "Bearer not-the-admin-token"},
               "vkey-bearer": {"Authorization": f"Bearer {token}"},
               "vkey-x-api-key": {"x-api-key": token},
               "admin-token-as-x-api-key": {"x-api-key": gateway.admin_token},
               "admin-token-unprefixed": {"Authorization": gateway.admin_token}}
    before = (gateway.admin("GET", "/audit")[1], gateway.admin("GET", "/keys")[1],
              gateway.admin("GET", "/policies")[1])
    for who, headers in callers.items():
        status, body = call(gateway, method, _concrete(path, world["bob"][1]["id"]), headers,
                            {"rpm": 1} if method in ("POST", "PUT", "PATCH") else None)
        assert status == 401, (who, status, body)
        assert body["error"]["type"] == "authentication_error"
        assert "admin token" in body["error"]["message"]
        assert token not in json.dumps(body) and gateway.admin_token not in json.dumps(body)
    after = (gateway.admin("GET", "/audit")[1], gateway.admin("GET", "/keys")[1],
             gateway.admin("GET", "/policies")[1])
    assert after == before


@pytest.mark.parametrize("path,method", ADMIN_OPERATIONS,
                         ids=[f"{m} {p}" for p, m in ADMIN_OPERATIONS])
def test_admin_token_reaches_every_admin_route(gateway, world, path, method):
    key_id = world["bob"][1]["id"]
    body = {"rpm": 7} if method in ("PUT", "PATCH") else {} if method == "POST" else None
    status, reply = call(gateway, method, _concrete(path, key_id),
                         {"Authorization": f"Bearer {gateway.admin_token}"}, body)
    assert status in (200, 201), (status, reply)


def test_me_shows_only_the_callers_own_scopes(gateway, world):
    token, alice = world["alice"]
    status, report = call(gateway, "GET", "/me", {"Authorization": f"Bearer {token}"})
    assert status == 200 and report["id"] == alice["id"]
    scopes = {entry["scope"]: entry for entry in report["limits"]}
    assert set(scopes) == {f"key:{alice['id']}", "user:alice", "team:ml", "project:churn"}
    assert "global" not in scopes
    for own in (f"key:{alice['id']}", "user:alice"):
        assert scopes[own]["visibility"] == "full" and "in_flight" in scopes[own]
    for shared in ("team:ml", "project:churn"):
        entry = scopes[shared]
        assert entry["visibility"] == "limits"
        assert set(entry) == {"scope", "policy", "budgets", "visibility"}
        for budget in entry["budgets"]:
            assert set(budget) <= {"usd", "period", "soft", "resets_at"}
    assert scopes["team:ml"]["policy"]["rpm"] == 100
    text = json.dumps(report)
    for other in (world["bob"][1]["id"], "user:bob", world["bob"][0]):
        assert other not in text  # nothing of another key or user


def test_me_of_a_child_key_shows_its_parent_in_full(gateway, world):
    token, child = world["child"]
    _, alice = world["alice"]
    status, report = call(gateway, "GET", "/me", {"Authorization": f"Bearer {token}"})
    assert status == 200 and report["id"] == child["id"]
    scopes = [entry["scope"] for entry in report["limits"]]
    assert scopes == [f"key:{child['id']}", f"key:{alice['id']}", "user:alice", "team:ml",
                      "project:churn"]
    parent = report["limits"][1]
    assert parent["visibility"] == "full" and parent["budgets"][0]["usd"] == 5


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Bearer vk-abc_" + "x" * 30}])
def test_me_without_a_valid_key_is_401(gateway, world, headers):
    status, body = call(gateway, "GET", "/me", headers)
    assert status == 401 and "error" in body


def test_me_with_the_admin_token_is_not_an_admin_view(gateway, world):
    status, body = call(gateway, "GET", "/me", {"Authorization": f"Bearer {gateway.admin_token}"})
    assert status == 401 and "virtual key" in body["error"]["message"]
