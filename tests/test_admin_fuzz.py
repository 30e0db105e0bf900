"""Schema-driven fuzzing of the admin API (schemathesis) against a real ``jupyter vkeys
serve`` on a real port, with the admin token, from the OpenAPI document the gateway
itself serves at ``{prefix}/api/openapi.json``.

For every operation, positive and negative examples: zero 5xx, responses (status, content
type, body) conform to the document, and a refused (4xx) change leaves keys, policies
and the audit trail as they were. ``VKEYS_FUZZ_EXAMPLES`` sets examples per operation
(default 15: about a minute for the module).
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, negative_data_rejection,
                                 not_a_server_error,
                                 response_schema_conformance, status_code_conformance)

from jupyter_vkeys.gateway.openapi import openapi_document
from support import ServeProcess

EXAMPLES = int(os.environ.get("VKEYS_FUZZ_EXAMPLES", "15"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          negative_data_rejection,
          response_schema_conformance]
# Query strings: a value of the wrong type often serializes to a valid one (null -> "",
# an integer sent as text), so "schema-violating data is refused" is not checked there.
QUERY_CHECKS = [check for check in CHECKS if check is not negative_data_rejection]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One standalone gateway process for the whole module, seeded with keys and policies
    so that paths with ids and scopes reach real objects."""
    data = tmp_path_factory.mktemp("fuzz") / "data"
    data.mkdir()
    proc = ServeProcess(data, config={"fake_mode": "always", "warehouse": False})
    ids = []
    for owner in ("alice", "bob"):
        status, body = proc.admin("POST", "/keys", {"owner": owner, "team": "ml", "rpm": 50,
                                                     "budgets": [{"usd": 5, "period": "day"}]})
        assert status == 201, body
        ids.append(body["id"])
    status, child = proc.admin("POST", "/keys", {"parent_id": ids[0], "alias": "kernel"})
    ids.append(child["id"])
    assert proc.admin("PUT", "/policies/team:ml", {"tpm": 1000})[0] == 200
    proc.key_ids = ids
    yield proc
    proc.stop()


def snapshot(proc) -> dict:
    """What a refused change must not touch (a key's state is derived from the clock and
    left out: a fuzzed key may expire between two snapshots)."""
    out = {}
    for path in ("/keys", "/policies", "/audit?limit=10000"):
        status, body = proc.admin("GET", path)
        assert status == 200, (path, body)
        out[path] = body
    for key in out["/keys"]["keys"]:
        key.pop("state", None)
    return out


def load_schema(served):
    """The served document, with key ids in paths narrowed to the seeded keys or one
    that does not exist, and parents to the seeded top-level keys (random ids would only
    ever meet 404 or "parent does not exist", and the fuzzing would not reach writes)."""
    with urllib.request.urlopen(served.url + "/api/openapi.json", timeout=10) as resp:
        document = json.loads(resp.read())
    id_param = document["paths"]["/keys/{id}"]["parameters"][0]
    id_param["schema"] = {"type": "string", "enum": [*served.key_ids, "nosuchkey"]}
    for path in ("/keys/{id}/revoke", "/keys/{id}/rotate"):
        document["paths"][path]["parameters"] = [id_param]
    document["components"]["schemas"]["KeyCreate"]["properties"]["parent_id"] = {
        "type": "string", "enum": served.key_ids[:2], "nullable": True}
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=served.url + "/api")
    return schema


def _cases() -> list:
    """(path, method, mode) of every operation: positive for all, negative for those
    with parameters or a body (the others have nothing to get wrong)."""
    cases = []
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            modes = [GenerationMode.POSITIVE]
            if "parameters" in item or "parameters" in operation or "requestBody" in operation:
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                cases.append(pytest.param(path, method.upper(), mode,
                                          id=f"{method.upper()} {path} {mode.value}"))
    return cases


@pytest.mark.parametrize("path,method,mode", _cases())
def test_admin_api_conforms_and_refusals_change_nothing(served, path, method, mode):
    operation = load_schema(served)[path][method]
    headers = {"Authorization": f"Bearer {served.admin_token}"}
    if path in ("/me", "/me/calls", "/cells", "/estimate"):
        headers = {}  # no virtual key: must be a 401 in the API's error shape
    mutating = method != "GET"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        before = snapshot(served) if mutating else None
        response = case.call(headers=headers, timeout=10)
        case.validate_response(response, checks=CHECKS if mutating else QUERY_CHECKS)
        if mutating and 400 <= response.status_code < 500:
            assert snapshot(served) == before, (method, path, response.text)

    run()


def test_openapi_lists_every_api_route(served):
    """The document is accurate in its list: every route the gateway mounts under
    ``{prefix}/api`` is in it, and nothing else."""
    from jupyter_vkeys.gateway.app import gateway_handlers
    from jupyter_vkeys.gateway.core import VKeysGateway

    with urllib.request.urlopen(served.url + "/api/openapi.json", timeout=10) as resp:
        document = json.loads(resp.read())
    assert document["servers"] == [{"url": "/vkeys/api"}]
    documented = {path.replace("{id}", "([^/]+)").replace("{scope}", "([^/]+)")
                  for path in document["paths"]}
    api = "/vkeys/api"
    mounted = {route[0][len(api):] for route in gateway_handlers(VKeysGateway())
               if route[0].startswith(api + "/")}
    mounted = {p.replace("(revoke|rotate)", "revoke") for p in mounted} | \
        {p.replace("(revoke|rotate)", "rotate") for p in mounted}
    assert mounted == documented
