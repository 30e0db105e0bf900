"""Cost per cell: the gateway side (``/api/cells`` on the kernels' loopback front, real
sockets) and the kernel side (:class:`CellReporter`), including a gateway that is down
and a key that is revoked."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from jupyter_vkeys.kernel.cells import CellReporter, cell_line


def _post(url: str, key: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def kernel_key(vkeys_server):
    """A kernel's key minted by the extension's broker, as a kernel start does."""
    env = vkeys_server.broker.launch_env("k-cells-1", {"JPY_SESSION_NAME": "a.ipynb"})
    return vkeys_server, env


def test_calls_between_start_and_end_belong_to_the_cell(kernel_key, jp_asyncio_loop):
    server, env = kernel_key
    url = env["VKEYS_URL"] + "/api/cells"
    client = openai.OpenAI(api_key=env["OPENAI_API_KEY"], base_url=env["OPENAI_BASE_URL"],
                           max_retries=0)

    def scenario():
        before = client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=3, messages=[{"role": "user", "content": "x"}])
        started = _post(url, env["OPENAI_API_KEY"], {"event": "start", "cell_id": "c-1"})
        for _ in range(2):
            client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=4, messages=[{"role": "user", "content": "y"}])
        ended = _post(url, env["OPENAI_API_KEY"],
                      {"event": "end", "cell_id": "c-1", "execution_count": 7})
        empty = [_post(url, env["OPENAI_API_KEY"], {"event": e}) for e in ("start", "end")]
        return before, started, ended, empty[1]

    before, started, (status, summary), (_, empty) = jp_asyncio_loop.run_until_complete(
        jp_asyncio_loop.run_in_executor(None, scenario))
    assert started == (200, {"ok": True}) and status == 200
    assert (summary["calls"], summary["output_tokens"], summary["execution_count"]) == (2, 8, 7)
    assert summary["cost_usd"] > 0 and summary["cell_id"] == "c-1"
    tight = summary["tightest"]  # the personal key's default budget, $20 a month
    assert (tight["usd"], tight["period"]) == (20.0, "month") and tight["remaining_usd"] < 20
    assert empty["calls"] == 0
    line = cell_line(summary)
    assert line.startswith("vkeys · 2 calls · ") and "left of $20.00/month" in line


@pytest.mark.parametrize("body, status, says", [
    (b"not json", 400, "must be JSON"),
    ({"event": "middle"}, 400, "event must be 'start' or 'end'"),
    ({"event": "end", "execution_count": -1}, 400, "execution_count must be an integer"),
    ({"event": "end", "execution_count": True}, 400, "execution_count must be an integer"),
    ({"event": "start", "cell_id": 5}, 400, "cell_id must be a string"),
    ({"event": "start", "cell_id": "x" * 300}, 400, "at most 256 characters"),
    (b"[" * 5000, 413, "at most 4096 bytes"),
])
def test_bad_cell_events_are_refused_saying_why(kernel_key, jp_asyncio_loop, body, status, says):
    server, env = kernel_key
    got, answer = jp_asyncio_loop.run_until_complete(jp_asyncio_loop.run_in_executor(
        None, _post, env["VKEYS_URL"] + "/api/cells", env["OPENAI_API_KEY"], body))
    assert got == status and says in answer["error"]["message"], answer


def test_revoked_key_is_refused_in_the_openai_dialect(kernel_key, jp_asyncio_loop):
    server, env = kernel_key
    server.broker.kernel_stopped("k-cells-1")
    got, answer = jp_asyncio_loop.run_until_complete(jp_asyncio_loop.run_in_executor(
        None, _post, env["VKEYS_URL"] + "/api/cells", env["OPENAI_API_KEY"], {"event": "start"}))
    assert got == 401 and "was revoked" in answer["error"]["message"]


class _Info:
    cell_id = "c-9"


class _Result:
    info = _Info()
    execution_count = 3


def test_reporter_never_breaks_a_cell_and_says_each_problem_once():
    shown: list[str] = []
    now = [0.0]
    answers: list = []

    def post(url, key, body):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    reporter = CellReporter("http://127.0.0.1:9/vkeys", "vk-x_y", shown.append, post=post,
                            clock=lambda: now[0])
    # The gateway is down: said once, then quiet; retried only after a minute.
    answers.extend([ConnectionRefusedError(111, "refused")])
    reporter.pre_run_cell(_Info())
    reporter.post_run_cell(_Result())
    reporter.pre_run_cell(_Info())
    assert len(shown) == 1 and "does not answer" in shown[0] and "calls still count" in shown[0]
    now[0] = 61.0  # back: the line under a cell that called a model
    answers.extend([{"ok": True}, {"calls": 1, "input_tokens": 3, "output_tokens": 2,
                                   "cost_usd": 0.00001, "tightest": None}])
    reporter.pre_run_cell(_Info())
    reporter.post_run_cell(_Result())
    assert shown[-1] == "vkeys · 1 call · 5 tokens · $0.000010 this cell"
    reporter.quiet = True  # %vkeys quiet
    answers.extend([{"ok": True}, {"calls": 1, "input_tokens": 3, "output_tokens": 2,
                                   "cost_usd": 0.00001, "tightest": None}])
    reporter.pre_run_cell(_Info())
    reporter.post_run_cell(_Result())
    assert len(shown) == 2
    # A revoked key: said once with what to do, then nothing is sent any more.
    import io
    revoked = urllib.error.HTTPError("u", 401, "Unauthorized", {}, io.BytesIO(json.dumps(
        {"error": {"message": "virtual key k1 was revoked"}}).encode()))
    answers.append(revoked)
    reporter.pre_run_cell(_Info())
    reporter.pre_run_cell(_Info())
    assert len(shown) == 3 and "was revoked" in shown[2] and "restart the kernel" in shown[2]
    assert answers == []
