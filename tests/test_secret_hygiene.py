"""Secret hygiene (issue 11): a recognisable provider key and every virtual-key secret are
searched for in everything the gateway says and keeps: every response (body and headers),
the server's log, the journal, the SQLite registry, the Parquet files. The provider key
must appear nowhere; a virtual key's secret only in the response that created (or rotated)
it. The scenarios include an upstream that echoes the provider key back in a 401."""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import openai

from support import REAL_ANTHROPIC_KEY, FakeUpstream, ServeProcess

OPENAI_SECRET = "sk-proj-HYGIENE-7f3a9c1e5b2d4f6a8c0e"


class EchoingProvider(BaseHTTPRequestHandler):
    """An OpenAI-shaped upstream: answers normally, except for model ``gpt-echo``, where it
    repeats the key it was sent in a 401 body and header, as real providers do."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        auth = self.headers.get("authorization", "")
        if body.get("model") == "gpt-echo":
            payload = json.dumps({"error": {"message": f"Incorrect API key provided: "
                                                       f"{auth[7:]}", "type": "invalid_request_error"}})
            self.send_response(401)
            self.send_header("www-authenticate", auth)
            self.send_header("x-echo", auth[7:])
        else:
            payload = json.dumps({"id": "c1", "object": "chat.completion", "created": 0,
                                  "model": body.get("model"), "choices": [{
                                      "index": 0, "finish_reason": "stop", "message": {
                                          "role": "assistant", "content": "fine"}}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
            self.send_response(200)
        data = payload.encode()
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


class Recorder:
    """Collects every response the scenario received, as text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, status: int, headers, body: bytes) -> None:
        self.texts.append(f"{status}\n{dict(headers)}\n{body.decode('utf-8', 'replace')}")


def call(base: str, method: str, path: str, recorder: Recorder | None, body=None,
         headers: dict | None = None) -> tuple[int, dict]:
    data = (body if isinstance(body, bytes) else json.dumps(body).encode()) \
        if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, head, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, head, raw = exc.code, exc.headers, exc.read()
    if recorder is not None:
        recorder.add(status, head, raw)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, {"raw": raw.decode("utf-8", "replace")}


def kept_text(data_dir: Path, log_file: Path) -> dict[str, str]:
    """Everything the gateway wrote, as searchable text (Parquet decoded to rows)."""
    import pyarrow.parquet as pq

    out = {str(log_file): log_file.read_text(errors="replace")}
    for path in data_dir.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            out[str(path)] = json.dumps(pq.read_table(path).to_pylist(), default=str)
        else:
            out[str(path)] = path.read_bytes().decode("utf-8", "replace")
    return out


def test_no_secret_anywhere(tmp_path):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), EchoingProvider)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    fake_anthropic = FakeUpstream(REAL_ANTHROPIC_KEY)
    secret_file = tmp_path / "anthropic.key"
    secret_file.write_text(REAL_ANTHROPIC_KEY)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = {"providers": {
        "openai": {"kind": "openai", "base_url": f"http://127.0.0.1:{upstream.server_port}/v1",
                   "api_key_env": "HYGIENE_OPENAI_KEY"},
        "anthropic": {"kind": "anthropic", "base_url": fake_anthropic.url,
                      "api_key_file": str(secret_file)}},
        "price_overrides": {"gpt-echo": {"input_mtok": 1, "output_mtok": 1}},
        "log_content": False}
    serve = ServeProcess(data_dir, config, env={"HYGIENE_OPENAI_KEY": OPENAI_SECRET})
    seen, shown_once = Recorder(), []
    admin = {"Authorization": f"Bearer {serve.admin_token}"}
    try:
        status, created = call(serve.url, "POST", "/api/keys", None,
                               {"owner": "ann", "team": "t",
                                "budgets": [{"usd": 1, "period": "day"}]}, admin)
        assert status == 201
        key, key_id = created["key"], created["id"]
        shown_once.append(key)
        status, broke = call(serve.url, "POST", "/api/keys", None,
                             {"owner": "bob", "budgets": [{"usd": 0.000001, "period": "total"}]},
                             admin)
        shown_once.append(broke["key"])
        # Data plane through the SDKs (their answers recorded from raw responses).
        oa = openai.OpenAI(api_key=key, base_url=serve.url + "/openai/v1", max_retries=0)
        raw = oa.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        seen.add(raw.status_code, raw.headers, raw.http_response.content)
        an = anthropic.Anthropic(api_key=key, base_url=serve.url + "/anthropic", max_retries=0)
        raw = an.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        seen.add(raw.status_code, raw.headers, raw.http_response.content)
        with an.messages.stream(model="claude-haiku-4-5", max_tokens=5,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
            seen.texts.append("".join(stream.text_stream))
        # The upstream echoes the real key in a 401.
        status, _ = call(serve.url, "POST", "/openai/v1/chat/completions", seen,
                         {"model": "gpt-echo", "max_tokens": 5,
                          "messages": [{"role": "user", "content": "x"}]},
                         {"Authorization": f"Bearer {key}"})
        assert status == 401
        # Refusals of every kind.
        chat = {"model": "gpt-4o-mini", "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}]}
        call(serve.url, "POST", "/openai/v1/chat/completions", seen, chat,
             {"Authorization": f"Bearer {broke['key']}"})
        call(serve.url, "POST", "/openai/v1/chat/completions", seen, chat,
             {"Authorization": f"Bearer {key[:-3]}xyz"})
        call(serve.url, "POST", "/openai/v1/chat/completions", seen, b"{bad",
             {"Authorization": f"Bearer {key}"})
        call(serve.url, "POST", "/openai/v1/chat/completions", seen, chat,
             {"Authorization": f"Bearer {OPENAI_SECRET}"})
        # Rotation shows the new secret once; the old one still works in its grace period.
        status, rotated = call(serve.url, "POST", f"/api/keys/{key_id}/rotate", None,
                               {"grace_seconds": 60}, admin)
        assert status == 200, rotated
        shown_once.append(rotated["key"])
        call(serve.url, "POST", "/openai/v1/chat/completions", seen, chat,
             {"Authorization": f"Bearer {rotated['key']}"})
        call(serve.url, "POST", f"/api/keys/{broke['id']}/revoke", seen, {}, admin)
        call(serve.url, "POST", "/openai/v1/chat/completions", seen, chat,
             {"Authorization": f"Bearer {broke['key']}"})
        # Everything an admin or a key holder can read.
        for path in ("/api/keys", f"/api/keys/{key_id}", "/api/audit", "/api/policies",
                     "/api/health"):
            call(serve.url, "GET", path, seen, headers=admin)
        call(serve.url, "GET", "/api/me", seen, headers={"Authorization": f"Bearer {key}"})
        call(serve.url, "GET", "/openai/v1/models", seen,
             headers={"Authorization": f"Bearer {key}"})
    finally:
        serve.stop()
        upstream.shutdown()
        fake_anthropic.stop()
    kept = kept_text(data_dir, Path(serve.log.name))
    secrets = {"openai provider key": OPENAI_SECRET, "anthropic provider key": REAL_ANTHROPIC_KEY}
    for i, token in enumerate(shown_once):
        secrets[f"virtual key {i}"] = token
        secrets[f"virtual key {i} secret part"] = token.split("_", 1)[1]
    hits = [(name, where) for name, value in secrets.items()
            for where, text in [*(("response", t) for t in seen.texts), *kept.items()]
            if value in text]
    # The one place where a provider key is expected: nowhere. A virtual key: only in the
    # response that created or rotated it (not recorded above).
    assert not hits, hits
    assert any("gpt-echo" in text for text in kept.values()), "the echo call was recorded"
