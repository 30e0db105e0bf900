"""The path of one data-plane call, independent of the HTTP server carrying it.

:class:`ProxyCall` is created by a server (the tornado handler in
:mod:`.dataplane`, or the standalone front in :mod:`.lean_server`) for one
``POST`` and run once: authenticate -> parse the body once -> aliases and
allowlists -> route -> admission (holds) -> relay (streamed as it arrives,
metered on the way) -> settle -> one event to the sink before the response
ends. The server cancels the task running :meth:`ProxyCall.run` when the client
goes away; settlement and the event still happen.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from functools import partial
from typing import Iterable
from urllib.parse import urlencode

import orjson

from ..dialects import DIALECTS, OPERATIONS
from ..keys import KeyRecord
from ..policy import Refusal
from ..pricing import Cost
from ..http.upstream import UpstreamError, UpstreamRequest
from ..registry import AuthError
from ..state import StateUnavailable
from ..usage import Usage
from ..call import Call
from .core import VKeysGateway
from .errors import ApiError
from ..http.exchange import ClientGone, Exchange
from .dry_run import estimate
from .request_fields import choice_count, output_cap

log = logging.getLogger("jupyter_vkeys.gateway")

# Response headers never relayed from upstream: hop-by-hop ones, lengths and encodings
# the server sets itself, and the provider account's own rate-limit state.
_DROP_RESPONSE = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-connection",
                            "te", "trailer", "transfer-encoding", "upgrade", "content-length",
                            "content-encoding", "date", "server", "set-cookie"})
_DROP_PREFIXES = tuple(prefix for dialect in DIALECTS.values()
                       for prefix in dialect.private_header_prefixes)

# The offline fake's controls (latency, errors): read by the in-process fake, never sent
# to a provider. No x-vkeys-* header is ever forwarded: VKeysGateway._open leaves them out
# of forwarded_header_names whatever c.VKeysGateway.forward_headers lists (so _relay pays
# nothing per header for it).
FAKE_HEADER_PREFIX = "x-vkeys-fake-"

_REFUSAL_STATUS = {"model": "refused_model", "unpriced": "refused_model",
                   "concurrency": "refused_rate", "rate_requests": "refused_rate",
                   "rate_tokens": "refused_rate", "budget": "refused_budget",
                   "max_tokens": "refused_budget"}


def _ends_stream(data: bytes, markers: tuple[bytes, ...]) -> bool:
    """Whether ``data`` holds a stream's final event (one of the dialect's ``markers``)."""
    for marker in markers:
        if marker in data:
            return True
    return False


def refusal_error(refusal: Refusal) -> ApiError:
    """Translate a policy refusal into a client error with its headers."""
    headers = dict(refusal.headers)
    if refusal.retry_after is not None:
        headers["retry-after"] = str(max(1, round(refusal.retry_after + 0.4999)))
        headers["retry-after-ms"] = str(int(refusal.retry_after * 1000))
    kind = {"model": "permission", "unpriced": "permission", "budget": "budget",
            "max_tokens": "invalid_request"}.get(refusal.kind, "rate_limit")
    openai_type = "tokens" if refusal.kind == "rate_tokens" else None
    code = {"concurrency": "concurrency_limit_exceeded", "unpriced": "model_not_priced",
            "max_tokens": "max_tokens_required"}.get(refusal.kind)
    return ApiError(refusal.status, kind, refusal.message, headers=headers, code=code,
                    event_status=_REFUSAL_STATUS.get(refusal.kind, "error"),
                    openai_type=openai_type, retry_after=refusal.retry_after)


def upstream_error(exc: UpstreamError) -> ApiError:
    """The client's error for an upstream that failed before answering: 504 for a
    timeout, 502 for a connection that failed, a TLS failure or unusable HTTP."""
    if exc.kind == "timeout":
        return ApiError(504, "timeout", f"upstream timed out: {exc.message}",
                        event_status="timeout")
    what = {"tls": "upstream TLS failed", "protocol": "upstream answered badly"}.get(
        exc.kind, "upstream unreachable")
    return ApiError(502, "upstream", f"{what}: {exc.message}", event_status="upstream_error")


def authenticate(gateway: VKeysGateway, token: str | None) -> KeyRecord:
    """The caller's key record; raises a 401 :class:`ApiError` saying why not."""
    if gateway.registry is None:
        raise ApiError(503, "unavailable", "the gateway is starting; retry in a moment",
                       headers={"retry-after": "1"})
    sync = gateway.registry_sync
    if sync is not None and not sync.connected:
        raise ApiError(503, "unavailable", "the gateway's shared key registry (PostgreSQL) is "
                       "unreachable, so a revocation could not reach this replica; no call is "
                       "admitted until it answers; retry shortly", headers={"retry-after": "1"})
    try:
        return gateway.registry.authenticate(token)
    except AuthError as exc:
        raise ApiError(401, "auth", exc.message, event_status="refused_key") from None


def error_response(exchange: Exchange, error: ApiError, dialect: str,
                   request_id: str = "") -> None:
    """Answer ``error`` in ``dialect`` on ``exchange`` (nothing if the response began)."""
    if exchange.head_sent:
        return
    headers = [("content-type", "application/json"), *error.headers.items()]
    if request_id:
        headers.append(("x-request-id", request_id))
    exchange.start(error.status, headers)
    exchange.finish(error.body(dialect, request_id))


class ProxyCall:
    """One ``POST`` of an LLM operation, relayed to the model's provider.

    Created by the serving layer with the request's :class:`Exchange`; the
    serving layer awaits :meth:`run` in a task it may cancel.
    """

    __slots__ = ("gateway", "exchange", "operation", "dialect", "wire", "op", "call",
                 "_ticket", "_meter", "_rates", "_concluded", "_cell", "_shared")

    def __init__(self, gateway: VKeysGateway, exchange: Exchange, operation: str,
                 dialect: str) -> None:
        self.gateway = gateway
        self.exchange = exchange
        self.operation = operation
        self.dialect = dialect
        self.wire = DIALECTS[dialect]  # what the dialect knows (routes, fields, meter)
        self.op = OPERATIONS[operation]
        self.call = Call(operation, dialect, client=(exchange.header("user-agent") or "")[:200])
        self._ticket = self._meter = self._rates = None
        self._concluded = False
        self._cell = None
        self._shared = False  # whether the shared ledger (state_url) holds this call

    async def run(self) -> None:
        """Answer the call, in every outcome: relayed, refused, cut or failed."""
        call = self.call
        call.request_bytes = len(self.exchange.body)
        self.gateway.telemetry.started()  # telemetry hook (in-flight gauge)
        try:
            await self._handle(call)
        except ApiError as error:
            call.status, call.http_status = error.event_status, error.status
            call.error_type, call.error_message = error.kind, error.message
            self._conclude()
            if error.event_status == "refused_rate" and not await self._paced(error):
                return
            error_response(self.exchange, error, self.dialect, call.request_id)
        except (asyncio.CancelledError, ClientGone):
            call.status, call.http_status = "cancelled", 499
            call.error_type = "client_disconnected"
        except Exception as exc:  # a bug: recorded, settled, answered 500 in the dialect
            log.exception("jupyter-vkeys: internal error on %s", self.operation)
            call.status, call.http_status = "error", 500
            call.error_type, call.error_message = "internal", type(exc).__name__
            self._conclude()
            error_response(self.exchange, ApiError(
                500, "internal", f"internal gateway error ({type(exc).__name__}); the call "
                "was recorded"), self.dialect, call.request_id)
        finally:
            self._conclude()

    async def _paced(self, error: ApiError) -> bool:
        """Hold a repeated rate refusal (see :mod:`.pacing`); False if the client left."""
        delay = self.gateway.refusal_pacer.delay(self.call.record.id, error.retry_after)
        if delay:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                return False
        return True

    def _conclude(self) -> None:
        """Settle the call's holds and journal its event, exactly once, before the client
        gets the end of the response (a crash after this point loses nothing)."""
        if self._concluded:
            return
        self._concluded = True
        call = self.call
        call.ended = time.time()
        if self._ticket is not None:
            try:
                self._settle(call)
            except Exception:  # a bug; the hold must still go, or the budget leaks
                log.exception("jupyter-vkeys: settling %s failed; charged at its hold",
                              call.request_id)
                self.gateway.policy.settle(self._ticket, self._ticket.hold, 0)
                if self._shared:
                    self.gateway.shared.settle(call.request_id, self._ticket.hold, 0)
        try:
            event = call.event()
        except Exception:  # a bug: record what is certain rather than nothing
            log.exception("jupyter-vkeys: building the event of %s failed", call.request_id)
            event = call.minimal_event()
        self.gateway.sink.emit(event)
        if self._cell is not None:
            self._cell.add(call)
        if call.status == "ok" and call.usage is not None:
            self.gateway.output_history.observe(call.request_model, call.usage.output)
        self.gateway.telemetry.finished(call, self.exchange)  # telemetry hook; never raises

    # -- the path of one call ----------------------------------------------------------
    async def _handle(self, call: Call) -> None:
        gw = self.gateway
        raw = self.exchange.body
        if len(raw) > gw.max_body_bytes:
            raise ApiError(413, "too_large", f"request body of {len(raw)} bytes exceeds the "
                           f"gateway's limit of {gw.max_body_bytes} bytes")
        call.record = record = authenticate(gw, self.wire.credential(
            self.exchange.header("authorization"), self.exchange.header("x-api-key")))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "invalid_request", f"request body is not valid JSON: {exc}",
                           event_status="error") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "invalid_request", "missing required parameter 'model'",
                           param="model")
        call.request_model = model
        call.stream = stream = body.get("stream") is True
        call.prompt_hash = _prompt_hash(body)
        cell = gw.cells.current(record.id)
        if cell is not None:
            self._cell = cell
            call.cell_id, call.execution_count = cell.cell_id, cell.execution_count
            if cell.dry_run:
                await self._dry_run(call, cell, body, raw)
                return
        try:
            admission = gw.policy.resolve(record, model)
        except Refusal as refusal:
            raise refusal_error(refusal) from None
        routed = gw.route(admission.model)
        if routed is None:
            raise ApiError(404, "not_found", f"model '{admission.model}' is not served by this "
                           "gateway (no catalog entry matches it)", param="model")
        entry, provider, transport = routed
        call.provider = provider.name
        if transport is None:
            raise ApiError(503, "unavailable", f"provider '{provider.name}' serving model "
                           f"'{admission.model}' has no credentials configured on the gateway")
        if not gw.is_fake(transport) and provider.kind != self.dialect:
            raise ApiError(400, "invalid_request", f"model '{admission.model}' is served by "
                           f"provider '{provider.name}', which speaks the {provider.kind} API; "
                           f"call it through the {provider.kind} route", param="model")
        tier = body.get("service_tier") if isinstance(body.get("service_tier"), str) else ""
        rates = gw.prices.rates(admission.model, provider.price_provider,
                                tier if tier not in ("auto", "default") else "")
        max_output = output_cap(self.operation, body)
        choices = choice_count(self.operation, body)
        try:
            ticket = gw.policy.admit(admission, rates, input_bound=len(raw),
                                     input_estimate=len(raw) // 4, max_output=max_output,
                                     model_max_output=entry.max_output_tokens, choices=choices)
        except Refusal as refusal:
            raise refusal_error(refusal) from None
        if gw.shared is not None:
            await self._admit_shared(call, ticket, rates, len(raw), max_output, choices,
                                     entry.max_output_tokens or gw.policy.default_max_output)
        self._ticket, self._rates = ticket, rates
        call.budget_warnings = list(ticket.warnings)
        if ticket.hold:
            gw.sink.hold(call.request_id, call.started, partial(call.hold_row, ticket.hold))
        if gw.log_content:
            call.prompt_text = orjson.dumps(body.get("messages") or body.get("input")
                                            or body.get("prompt") or "").decode()
        # The body goes upstream unchanged unless the gateway must change it.
        changed = False
        upstream_model = entry.upstream or admission.model
        if upstream_model != model:
            body["model"] = upstream_model
            changed = True
        if ticket.clamped_to is not None and self.op.clamp_field:
            body[self.op.clamp_field] = ticket.clamped_to
            changed = True
        strip_usage = False
        if stream and self.wire.ask_stream_usage(self.op, body):
            strip_usage = changed = True
        try:
            payload = orjson.dumps(body) if changed else raw
        except orjson.JSONEncodeError:
            raise _too_deep() from None
        self._meter = self.wire.meter(self.operation, strip_usage)
        await self._relay(call, provider, transport, body, payload)

    async def _admit_shared(self, call: Call, ticket, rates, input_bound: int,
                            max_output: int | None, choices: int, ceiling: int) -> None:
        """Admit on the replicas' shared ledger too (``c.VKeysGateway.state_url``), after
        the local engine did; a refusal there releases the local reservation."""
        try:
            self._shared = await self.gateway.shared.admit(
                call.request_id, ticket, rates, input_bound=input_bound,
                max_output=max_output, choices=choices, ceiling=ceiling)
        except Refusal as refusal:
            self.gateway.policy.settle(ticket, 0, 0)
            raise refusal_error(refusal) from None
        except StateUnavailable as exc:
            self.gateway.policy.settle(ticket, 0, 0)
            raise ApiError(503, "unavailable", exc.message, headers={"retry-after": "1"},
                           event_status="error") from None
        except BaseException:  # cancelled: nothing was sent upstream
            self.gateway.policy.settle(ticket, 0, 0)
            raise

    async def _dry_run(self, call: Call, cell, body: dict, raw: bytes) -> None:
        """A call inside a dry-run cell: priced as the real model would be, answered by
        the offline fake, recorded as ``dry_run`` at no cost (no hold, no spend, no rate
        use). The answer carries the figures in ``x-vkeys-dry-run-*`` headers."""
        gw = self.gateway
        figures = estimate(gw, call.record, self.operation, body, len(raw))
        cell.add_estimate(figures)
        routed = gw.route(figures.model)
        call.provider = routed[1].name if routed else ""
        call.status = "dry_run"
        call.usage = Usage(input_uncached=figures.input_tokens)
        call.dry_run_cost, call.dry_run_worst = figures.expected_pico, figures.worst_pico
        call.tags["dry_run_verdict"] = figures.verdict or "allowed"
        call.upstream_started = time.time()
        answer = await gw.fake.send(UpstreamRequest("POST", "", {}, raw, parsed=body,
                                                    operation=self.operation))
        call.upstream_headers_at = time.time()
        headers = {"content-type": answer.headers.get("content-type", "application/json"),
                   "x-request-id": call.request_id, "x-vkeys-key-id": call.record.id,
                   "x-vkeys-dry-run": "true",
                   "x-vkeys-dry-run-verdict": (figures.verdict or "allowed")[:300]}
        for name, pico in (("cost", figures.expected_pico), ("worst", figures.worst_pico)):
            headers[f"x-vkeys-dry-run-{name}-usd"] = "unpriced" if pico is None \
                else f"{pico / 1e12:.9f}"
        call.http_status = answer.status
        self.exchange.start(answer.status, list(headers.items()))
        async for chunk in answer.chunks():
            if call.first_byte is None:
                call.first_byte = time.time()
            call.response_bytes += len(chunk)
            await self.exchange.write(chunk)
        call.upstream_wait = call.upstream_headers_at - call.upstream_started
        self._conclude()
        self.exchange.finish(b"")

    async def _relay(self, call: Call, provider, transport, body: dict, payload: bytes) -> None:
        gw = self.gateway
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        forward = gw.forwarded_header_names
        to_fake = gw.is_fake(transport)
        for name, value in self.exchange.header_items():
            lname = name.lower()
            if lname in forward or (to_fake and lname.startswith(FAKE_HEADER_PREFIX)):
                headers[lname] = value
        if not to_fake:  # (a real provider speaks the call's dialect: checked in _handle)
            for name, value in self.wire.required_headers.items():
                if name not in headers:
                    headers[name] = value
        headers.update(provider.headers)
        headers.update(provider.auth_headers())
        url = provider.base_url + self.op.upstream_path
        if provider.query:
            url += "?" + urlencode(provider.query)
        request = UpstreamRequest("POST", url, headers, payload, parsed=body,
                                  operation=self.operation)
        call.upstream_started = time.time()
        try:
            upstream = await transport.send(request)
        except UpstreamError as exc:
            call.request_sent = exc.sent
            raise upstream_error(self._scrubbed(exc)) from None
        except asyncio.CancelledError:
            call.request_sent = True  # the client left while the upstream was working
            raise
        call.request_sent = True
        call.upstream_headers_at = time.time()
        try:
            await self._relay_response(call, upstream)
        finally:
            upstream.close()  # an unfinished answer aborts the connection: the upstream stops

    def _scrubbed(self, exc: UpstreamError) -> UpstreamError:
        """``exc`` with provider keys removed from its message (a parser's message may
        quote what the upstream sent). Called on error paths only."""
        scrubber = self.gateway.scrubber
        if scrubber:
            exc.message = scrubber.text(exc.message)
        return exc

    def _response_headers(self, call: Call, upstream_headers: Iterable[tuple[str, str]]
                          ) -> list[tuple[str, str]]:
        """The client's response headers: upstream's, filtered and scrubbed of provider
        keys (see :mod:`..providers.scrub`), plus the gateway's own."""
        out = {"content-type": "application/json"}
        for name, value in upstream_headers:
            lname = name.lower()
            if lname not in _DROP_RESPONSE and not lname.startswith(_DROP_PREFIXES):
                out[lname] = value
        out["x-request-id"] = call.request_id
        out["x-vkeys-key-id"] = call.record.id
        for name, value in self._ticket.headers.items():
            out[name.lower()] = value
        scrubber = self.gateway.scrubber
        return scrubber.headers(list(out.items())) if scrubber else list(out.items())

    async def _relay_response(self, call: Call, upstream) -> None:
        exchange = self.exchange
        meter = self._meter
        status = upstream.status
        exchange.start(status, self._response_headers(call, upstream.headers.items()))
        if not (call.stream and status == 200):
            limit = self.gateway.max_response_bytes
            parts, size = [], 0
            try:
                async for chunk in upstream.chunks():
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(502, "upstream", f"the upstream's answer exceeds the "
                                       f"gateway's limit of {limit} bytes (max_response_bytes)",
                                       event_status="upstream_error")
                    parts.append(chunk)
            except UpstreamError as exc:
                raise upstream_error(self._scrubbed(exc)) from None
            data = b"".join(parts)
            call.first_byte = time.time()
            if status < 300:
                meter.read_body(data)
                if meter.usage is None and data and not _is_json(data):
                    raise ApiError(502, "upstream", f"upstream answered badly: its {status} "
                                   "answer is not valid JSON", event_status="upstream_error")
            else:
                if self.gateway.scrubber:
                    data = self.gateway.scrubber.data(data)
                call.status, call.http_status = "upstream_error", status
                call.error_type, call.error_message = "upstream_status", data[:500].decode(
                    "utf-8", "replace")
            call.response_bytes = len(data)
            call.upstream_wait = time.time() - call.upstream_started
            self._conclude()
            exchange.finish(data)
            return
        revoked_check = self.gateway.cut_revoked_streams
        records = self.gateway.registry.records
        key_id = call.record.id
        clock = time.perf_counter
        chunks = upstream.chunks().__aiter__()
        ends = self.wire.stream_ends
        deferred = b""
        try:
            while True:
                waited = clock()
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                call.upstream_wait += clock() - waited
                out = meter.feed(chunk)
                if not out:
                    continue
                if deferred or _ends_stream(out, ends):
                    # The stream's last event, and what arrived with it, waits for the
                    # journal write; sent together they cost the client one write less.
                    deferred += out
                    continue
                if call.first_byte is None:
                    call.first_byte = time.time()
                call.response_bytes += len(out)
                await exchange.write(out)
                if revoked_check and records[key_id].revoked_at is not None:
                    call.status, call.error_type = "cancelled", "key_revoked"
                    exchange.abort()
                    return
            deferred += meter.finish()
            call.upstream_wait += call.upstream_headers_at - call.upstream_started
            call.response_bytes += len(deferred)
            if deferred and call.first_byte is None:
                call.first_byte = time.time()
            self._conclude()
            exchange.finish(deferred)
        except UpstreamError as exc:
            # Headers are out: the client sees the stream end early, the warehouse sees why.
            call.status = "timeout" if exc.kind == "timeout" else "upstream_error"
            call.error_type, call.error_message = exc.kind, self._scrubbed(exc).message
            self._conclude()
            exchange.abort()

    def _settle(self, call: Call) -> None:
        """Replace the hold with what the call actually cost; never raises.

        A call whose request may have reached the upstream is charged what the
        provider may bill even when no usage arrived: a client that left (before the
        headers or mid-stream), a read timeout, a cut stream, or a complete answer
        without usage. Then the input is estimated from the request size and the
        output from the content events relayed (streams) or the answer's size, capped
        by the worst case held at admission, and the event is flagged
        ``usage_estimated``. An upstream's own error answer (4xx/5xx) costs nothing."""
        meter, rates = self._meter, self._rates
        usage = meter.usage if meter is not None else None
        billable = (meter is not None and call.request_sent
                    and call.error_type != "upstream_status")
        complete = call.status == "ok"
        if billable and (usage is None or not complete):
            known = usage or Usage()
            if call.stream:
                output = max(known.output, meter.deltas)
            else:
                output = known.output or (call.response_bytes // 4 if complete else 0)
            usage = Usage(input_uncached=known.input_uncached if known.input_total
                          else call.request_bytes // 4, cache_read=known.cache_read,
                          cache_write_5m=known.cache_write_5m,
                          cache_write_1h=known.cache_write_1h, output=output,
                          reasoning=known.reasoning)
            call.usage_estimated = True
        if meter is not None:
            call.response_model = meter.response_model
            call.finish_reason = meter.finish_reason
        call.usage = usage
        if usage is not None and rates is not None:
            cost = rates.cost(usage)
            hold = self._ticket.hold
            if call.usage_estimated and hold and cost.pico > hold:
                cost = Cost(hold, {k: v * hold // cost.pico for k, v in cost.breakdown.items()},
                            cost.price_version, cost.status)
        elif usage is not None:
            cost = Cost(0, {}, "", "unpriced")
        else:
            cost = Cost(0, {}, rates.version if rates else "", "priced" if rates else "unpriced")
        call.cost = cost
        crossed = self.gateway.policy.settle(self._ticket, cost.pico,
                                             usage.total if usage else 0)
        if self._shared:
            self.gateway.shared.settle(call.request_id, cost.pico, usage.total if usage else 0)
        if crossed:
            call.budget_warnings.extend(crossed)
            log.info("budget warning: %s", "; ".join(crossed))


def _is_json(data: bytes) -> bool:
    """Whether ``data`` parses as JSON (asked only of 2xx answers that carried no usage)."""
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _too_deep() -> ApiError:
    return ApiError(400, "invalid_request", "request body nests JSON deeper than 255 levels; "
                    "flatten it (no provider accepts such a request)")


def _prompt_hash(body: dict) -> str:
    """A short hash of the normalized prompt, for loop detection (never the text).
    Raises a 400 :class:`ApiError` for a prompt nested too deep to encode."""
    prompt = body.get("messages") or body.get("input") or body.get("prompt") or ""
    try:
        encoded = orjson.dumps(prompt, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        raise _too_deep() from None
    return hashlib.blake2b(encoded, digest_size=8).hexdigest()
