"""The gateway's routes under a Jupyter server's ``{base_url}vkeys/``: JSON errors in the
route's dialect for unknown and unsupported paths, and ``models/{id}`` (issue 11,
item 16), as tornado serves them inside Jupyter."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("path, dialect, text", [
    (("openai", "v1", "moderations"), "openai", "does not serve /v1/moderations"),
    (("openai", "v1", "models", "no-such-model"), "openai", "not in this gateway's catalog"),
    (("anthropic", "v1", "files"), "anthropic", "does not serve /v1/files"),
    (("nowhere",), "openai", "no such route on this gateway"),
])
def test_unknown_paths_answer_json_in_the_dialect(vkeys_server, jp_fetch, jp_asyncio_loop,
                                                  path, dialect, text):
    _, token = vkeys_server.gateway.registry.create({"owner": "sdk"}, actor="test")

    async def fetch():
        return await jp_fetch("vkeys", *path, raise_error=False,
                              headers={"Authorization": f"Bearer {token}",
                                       "x-api-key": token})

    response = jp_asyncio_loop.run_until_complete(fetch())
    assert response.code == 404
    assert response.headers["content-type"] == "application/json"
    body = json.loads(response.body)
    assert text in body["error"]["message"]
    assert (body.get("type") == "error") == (dialect == "anthropic")


def test_models_retrieve_under_jupyter(vkeys_server, jp_fetch, jp_asyncio_loop):
    _, token = vkeys_server.gateway.registry.create({"owner": "sdk"}, actor="test")

    async def fetch():
        return await jp_fetch("vkeys", "openai", "v1", "models", "gpt-4o-mini",
                              headers={"Authorization": f"Bearer {token}"})

    body = json.loads(jp_asyncio_loop.run_until_complete(fetch()).body)
    assert body == {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai"}
