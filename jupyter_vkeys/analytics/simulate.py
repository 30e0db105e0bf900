"""A traffic simulator: realistic event rows in the documented warehouse layout.

Called by ``jupyter vkeys simulate``, the bundled notebooks (when no warehouse exists
yet), the tests and ``benchmarks/``. Everything is vectorised with numpy and written
with pyarrow: hour-by-hour call counts per user (weekday and hour-of-day seasonality in
each team's time zone, day-to-day burstiness), then one row per call with model,
notebook, cell, prompt hash, tokens by class (cache reads and writes, reasoning),
streaming, latency, status (errors, refusals, cancellations, dry runs) and cost.

With ``anomalies=True`` it injects labelled anomalies (spend spikes, runaway loops,
first use of a pricier model, error spikes, drops of a steady service key) and writes
their labels to ``anomalies.json`` beside ``events/``. Prices are the simulator's own
list prices (``price_version = "simulated"``), not the gateway's price table.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..warehouse.schema import EVENTS_SCHEMA, SCHEMA_VERSION

# model -> (provider, USD per Mtok: input, output, cache read, cache write, reasoning?, ms/token)
MODELS: dict[str, tuple[str, float, float, float, float, bool, float]] = {
    "gpt-4o-mini": ("openai", 0.15, 0.60, 0.075, 0.0, False, 8.0),
    "gpt-4.1": ("openai", 2.00, 8.00, 0.50, 0.0, False, 14.0),
    "gpt-4o": ("openai", 2.50, 10.00, 1.25, 0.0, False, 12.0),
    "o3": ("openai", 2.00, 8.00, 0.50, 0.0, True, 20.0),
    "claude-3-5-haiku-latest": ("anthropic", 0.80, 4.00, 0.08, 1.00, False, 9.0),
    "claude-sonnet-4-0": ("anthropic", 3.00, 15.00, 0.30, 3.75, False, 16.0),
    "claude-opus-4-0": ("anthropic", 15.00, 75.00, 1.50, 18.75, False, 28.0),
}
MODEL_NAMES = list(MODELS)
EVERYDAY_MODELS = MODEL_NAMES[:-1]  # opus is kept for "first use of a pricier model"
STATUSES = [  # (status, http status, probability)
    ("ok", 200, 0.958), ("error", 400, 0.008), ("upstream_error", 502, 0.006),
    ("timeout", 504, 0.002), ("refused_rate", 429, 0.009), ("refused_budget", 429, 0.004),
    ("refused_model", 403, 0.002), ("cancelled", 499, 0.005), ("dry_run", 200, 0.006),
]
TEAM_OFFSETS = [0.0, -5.0, -8.0, 1.0, 5.5, 9.0, -3.0, 2.0]  # hours from UTC
NOTEBOOKS = ["explore.ipynb", "eval.ipynb", "rag_pipeline.ipynb", "summaries.ipynb",
             "labeling.ipynb", "report.ipynb", "agents.ipynb", "finetune_prep.ipynb"]
CELLS = 12
PROMPTS_PER_CELL = 6
LABELS_FILE = "anomalies.json"


@dataclass
class Fleet:
    """Who calls: users (each with a personal key, notebooks, a model mix, a base rate)
    and service keys (steady traffic, no notebook). Entities are indexed 0..n-1; the
    first ``users`` are people, the rest service keys of the same-index user."""

    users: list[str]
    teams: list[str]
    team_of: np.ndarray          # entity -> team index
    project_of: list[str]        # entity -> project name
    key_of: list[str]            # entity -> detector entity key (personal or service key)
    is_service: np.ndarray       # entity -> bool
    owner_of: np.ndarray         # entity -> user index
    rate: np.ndarray             # entity -> mean calls per active day
    model_cum: np.ndarray        # entity x model cumulative probabilities
    notebook_cum: np.ndarray     # entity x notebook cumulative probabilities
    offset_h: np.ndarray         # entity -> time-zone offset in hours

    @property
    def size(self) -> int:
        """Number of entities (people and service keys)."""
        return len(self.key_of)


def make_fleet(users: int, teams: int, rng: np.random.Generator,
               service_share: float = 0.2, calls_per_day: float = 60.0) -> Fleet:
    """Draw a fleet: ``users`` people in ``teams`` teams, and a service key for about
    ``service_share`` of them. Called by :func:`simulate` and the benchmarks."""
    team_names = [f"team-{chr(97 + i)}" if i < 26 else f"team-{i}" for i in range(teams)]
    user_names = [f"user{i:03d}" for i in range(users)]
    team_of_user = rng.integers(0, teams, users)
    team_of_user[:min(users, teams)] = np.arange(min(users, teams))
    services = np.flatnonzero(rng.random(users) < service_share)
    owner = np.concatenate([np.arange(users), services])
    n = len(owner)
    is_service = np.zeros(n, bool)
    is_service[users:] = True
    team_of = team_of_user[owner]
    project_of = [f"{team_names[t]}-proj{int(p)}" for t, p in
                  zip(team_of, rng.integers(0, 2, n))]
    key_of = [f"sim{uuid.UUID(int=int(rng.integers(0, 2**62)) << 64 | i).hex[:12]}"
              for i in range(n)]
    rate = calls_per_day * rng.lognormal(0.0, 0.8, n)
    rate[is_service] *= 0.6
    nm = len(EVERYDAY_MODELS)
    team_pref = rng.dirichlet(np.full(nm, 0.7), teams)
    mix = np.array([rng.dirichlet(team_pref[t] * 8 + 0.05) for t in team_of])
    model_cum = np.zeros((n, len(MODEL_NAMES)))
    model_cum[:, :nm] = np.cumsum(mix, axis=1)
    model_cum[:, nm:] = 1.0
    nb = rng.dirichlet(np.full(len(NOTEBOOKS), 0.5), n)
    notebook_cum = np.cumsum(nb, axis=1)
    offset = np.array([TEAM_OFFSETS[t % len(TEAM_OFFSETS)] for t in team_of])
    return Fleet(user_names, team_names, team_of, project_of, key_of, is_service, owner,
                 rate, model_cum, notebook_cum, offset)


def hourly_profile(fleet: Fleet, hours_utc: np.ndarray) -> np.ndarray:
    """Relative call intensity (entity x hour), mean 1 per entity over a week.

    People: work hours in their team's zone, quiet weekends; service keys: flat with
    a mild daily wave. ``hours_utc`` are epoch hours (hours since 1970, UTC)."""
    local = hours_utc[None, :] + fleet.offset_h[:, None]
    hod = np.mod(local, 24.0)
    dow = np.mod(np.floor(local / 24.0) + 3, 7)  # 1970-01-01 was a Thursday (0 = Monday)
    work = 0.04 + np.exp(-0.5 * ((hod - 13.5) / 2.6) ** 2)
    work *= np.where(dow >= 5, 0.12, 1.0)
    flat = 1.0 + 0.3 * np.sin(2 * np.pi * (hod - 6.0) / 24.0)
    prof = np.where(fleet.is_service[:, None], flat, work)
    return prof / prof.mean(axis=1, keepdims=True)


def hourly_counts(fleet: Fleet, start_hour: int, hours: int, rng: np.random.Generator,
                  burst: float = 2.0) -> np.ndarray:
    """Calls per entity and hour (Poisson around rate x profile x a gamma day factor)."""
    h = np.arange(start_hour, start_hour + hours)
    prof = hourly_profile(fleet, h.astype(float))
    days = (hours + 23) // 24 + 1
    day_factor = rng.gamma(burst, 1.0 / burst, (fleet.size, days))
    day_idx = (h - start_hour) // 24
    day_factor[fleet.is_service] = 1.0
    lam = fleet.rate[:, None] / 24.0 * prof * day_factor[:, day_idx]
    return rng.poisson(lam)


def _hex(values: np.ndarray, width: int = 16) -> np.ndarray:
    """Fixed-width lowercase hex digits (uint8 matrix, one row per value) of 64-bit values,
    vectorised through ``bytes.hex``."""
    raw = np.ascontiguousarray(values.astype(">u8")).tobytes().hex().encode()
    return np.frombuffer(raw, np.uint8).reshape(len(values), 16)[:, 16 - width:]


def _strings(matrix: np.ndarray) -> pa.Array:
    """A string column from a uint8 matrix of ASCII characters (one row per string)."""
    m = np.ascontiguousarray(matrix)
    return pa.array(m.view(f"S{m.shape[1]}").ravel(), pa.binary(m.shape[1])).cast(pa.string())


def _hash_ids(codes: np.ndarray, salt: int, width: int = 16) -> pa.Array:
    """Stable pseudo-random hex ids of integer codes (prompt hashes, cell ids, kernels)."""
    x = codes.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)
    x ^= x >> np.uint64(29)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(32)
    return _strings(_hex(x, width))


def _hex_ids(ms: np.ndarray, random: np.ndarray) -> pa.Array:
    """UUIDv7-shaped strings from 48-bit ms timestamps and 64 random bits, vectorised."""
    hi = ms.astype(np.uint64) << np.uint64(16) | np.uint64(0x7000) | (
        random.astype(np.uint64) & np.uint64(0x0FFF))
    a, b = _hex(hi), _hex(random.astype(np.uint64))
    dash = np.full((len(ms), 1), ord("-"), np.uint8)
    return _strings(np.concatenate([a[:, :8], dash, a[:, 8:12], dash, a[:, 12:16], dash,
                                    b[:, :4], dash, b[:, 4:16]], axis=1))


def _dict(indices: np.ndarray, values: list[str | None] | pa.Array) -> pa.Array:
    """A dictionary-encoded string column: indices into ``values``. Kept encoded (Parquet
    stores strings dictionary-encoded anyway; decoding 20 columns cost a third of the
    simulator's time); :func:`as_strings` decodes when plain strings are wanted."""
    if not isinstance(values, pa.Array):
        values = pa.array(values, pa.string())
    nulls = values.is_null().to_numpy(zero_copy_only=False)
    if nulls.any():  # nulls go in the indices (Parquet cannot write a null dictionary entry)
        idx = pa.array(indices, pa.int32(), mask=nulls[indices])
        return pa.DictionaryArray.from_arrays(idx, values.fill_null(""))
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), values)


def as_strings(table: pa.Table) -> pa.Table:
    """``table`` with dictionary columns decoded: exactly :data:`EVENTS_SCHEMA`."""
    return table.cast(EVENTS_SCHEMA)


def _pick(cum: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw a category per event from per-entity cumulative probabilities."""
    u = rng.random(len(rows))
    out = np.zeros(len(rows), np.int64)
    c = cum[rows]
    for j in range(cum.shape[1] - 1):
        out += u > c[:, j]
    return np.minimum(out, cum.shape[1] - 1)


def events(fleet: Fleet, entity: np.ndarray, t_us: np.ndarray, rng: np.random.Generator, *,
           model: np.ndarray | None = None, notebook: np.ndarray | None = None,
           cell: np.ndarray | None = None, prompt: np.ndarray | None = None,
           status: np.ndarray | None = None, input_scale: float | np.ndarray = 1.0) -> pa.Table:
    """One event row per call: ``entity`` indexes the fleet, ``t_us`` are start times in
    epoch microseconds. Optional arrays force the model, notebook, cell, prompt index or
    status index (into :data:`STATUSES`) per call where they are >= 0; the rest is drawn."""
    n = len(entity)

    def forced(given: np.ndarray | None, drawn: Callable[[], np.ndarray]) -> np.ndarray:
        if given is not None and np.all(given >= 0):
            return given
        value = drawn()
        return value if given is None else np.where(given >= 0, given, value)

    model = forced(model, lambda: _pick(fleet.model_cum, entity, rng))
    notebook = forced(notebook, lambda: _pick(fleet.notebook_cum, entity, rng))
    cell = forced(cell, lambda: rng.integers(0, CELLS, n))
    prompt = forced(prompt, lambda: rng.integers(0, PROMPTS_PER_CELL, n))
    probs = np.array([p for _, _, p in STATUSES])
    status = forced(status, lambda: np.minimum(np.searchsorted(
        np.cumsum(probs / probs.sum()), rng.random(n), side="right"), len(STATUSES) - 1))
    service = fleet.is_service[entity]
    owner = fleet.owner_of[entity]
    # identities -------------------------------------------------------------------
    nb_count = len(NOTEBOOKS)
    kernel_code = np.where(service, -1, entity * nb_count + notebook)
    uniq_k, inv_k = np.unique(kernel_code, return_inverse=True)
    child_names = [None if k < 0 else f"{fleet.key_of[k // nb_count]}k{k % nb_count}"
                   for k in uniq_k]
    kernel_names = [None if k < 0 else str(uuid.UUID(int=int(k) * 7919 + 1)) for k in uniq_k]
    key_codes = np.where(service, entity, fleet.size + inv_k)
    uk, ik = np.unique(key_codes, return_inverse=True)
    key_names = [fleet.key_of[c] if c < fleet.size else child_names[c - fleet.size] for c in uk]
    key_id = _dict(ik, key_names)
    parent = _dict(np.where(service, 0, entity + 1), [None] + fleet.key_of)
    alias = _dict(np.where(service, 1, 0), ["kernel", "ci"])
    user = _dict(owner, fleet.users)
    team = _dict(fleet.team_of[entity], fleet.teams)
    up, ip = np.unique(entity, return_inverse=True)
    project = _dict(ip, [fleet.project_of[e] for e in up])
    notebook_path = _dict(np.where(service, 0, notebook + 1), [None] + [
        f"work/{nb}" for nb in NOTEBOOKS])
    kernel_id = _dict(inv_k, kernel_names)
    cell_code = np.where(service, -1, (entity * nb_count + notebook) * CELLS + cell)
    uc, ic = np.unique(cell_code, return_inverse=True)
    cell_names = pc.if_else(pa.array(uc < 0), pa.scalar(None, pa.string()),
                            _hash_ids(np.maximum(uc, 0), 3, 12))
    cell_id = _dict(ic, cell_names)
    prompt_code = np.where(service, entity * 1000 + prompt,
                           ((entity * nb_count + notebook) * CELLS + cell) * 1000 + prompt)
    uq, iq = np.unique(prompt_code, return_inverse=True)
    prompt_hash = _dict(iq, _hash_ids(uq, 17))
    # model, provider, client -------------------------------------------------------
    spec = [MODELS[m] for m in MODEL_NAMES]
    provider_idx = np.array([0 if s[0] == "openai" else 1 for s in spec])[model]
    provider = _dict(provider_idx, ["openai", "anthropic"])
    operation = _dict(provider_idx, ["chat.completions", "messages"])
    model_col = _dict(model, MODEL_NAMES)
    client_choice = np.where(service, 3, rng.integers(0, 3, n))
    client = _dict(np.where(provider_idx == 1, client_choice + 4, client_choice), [
        "OpenAI/Python 1.99.1", "langchain-openai/0.3", "jupyter-ai/2.31", "python-requests/2.32",
        "Anthropic/Python 0.64.0", "langchain-anthropic/0.3", "jupyter-ai/2.31",
        "python-httpx/0.28"])
    stream = rng.random(n) < np.where(service, 0.1, 0.65)
    # tokens -------------------------------------------------------------------------
    st = np.array([s for s, _, _ in STATUSES])[status]
    served = (st == "ok") | (st == "cancelled") | (st == "dry_run")
    inp = np.rint(rng.lognormal(np.log(1200), 1.0, n) * input_scale).astype(np.int64) + 20
    out = np.rint(rng.lognormal(np.log(280), 0.9, n)).astype(np.int64) + 1
    out = np.where(st == "cancelled", out // 3, out)
    inp = np.where(served, inp, 0)
    out = np.where(served, out, 0)
    cached = (rng.random(n) < 0.35) & served
    cache_read = np.where(cached, (inp * rng.uniform(0.3, 0.9, n)).astype(np.int64), 0)
    writes = (provider_idx == 1) & (rng.random(n) < 0.1) & served
    cache_write = np.where(writes, ((inp - cache_read) * rng.uniform(0.2, 0.6, n))
                           .astype(np.int64), 0)
    uncached = inp - cache_read - cache_write
    is_reasoning = np.array([s[5] for s in spec])[model]
    reasoning = np.where(is_reasoning, (out * rng.uniform(0.3, 0.8, n)).astype(np.int64), 0)
    # cost ---------------------------------------------------------------------------
    p_in, p_out, p_cr, p_cw = (np.array([s[i] for s in spec])[model] / 1e6 for i in (1, 2, 3, 4))
    c_in = uncached * p_in
    c_cache = cache_read * p_cr + cache_write * p_cw
    c_out = out * p_out
    cost = c_in + c_cache + c_out
    dry = st == "dry_run"
    dry_cost = np.where(dry, cost, np.nan)
    dry_worst = np.where(dry, cost * rng.uniform(2, 6, n), np.nan)
    cost = np.where(dry, 0.0, cost)
    c_in, c_cache, c_out = (np.where(dry, 0.0, c) for c in (c_in, c_cache, c_out))
    # timing -------------------------------------------------------------------------
    ms_tok = np.array([s[6] for s in spec])[model]
    upstream = rng.lognormal(np.log(350), 0.5, n)
    overhead = rng.uniform(0.2, 1.2, n)
    ttft = upstream + overhead
    latency = np.where(served, ttft + out * ms_tok * rng.uniform(0.7, 1.4, n), ttft)
    start = t_us.astype(np.int64)
    first = start + (ttft * 1000).astype(np.int64)
    end = start + (latency * 1000).astype(np.int64)
    http = np.array([h for _, h, _ in STATUSES])[status]
    finish = _dict(np.where(st == "ok", 1, np.where(st == "cancelled", 2, 0)),
                   [None, "stop", "length"])
    errtype = _dict(status, [None if s in ("ok", "dry_run") else s for s, _, _ in STATUSES])
    errmsg = _dict(status, [None if s in ("ok", "dry_run") else f"simulated {s}"
                            for s, _, _ in STATUSES])
    rnd = rng.integers(0, 2**63 - 1, n, dtype=np.int64)
    ids = _hex_ids(start // 1000, rnd)
    ts = pa.timestamp("us", tz="UTC")

    def nullable_float(x: np.ndarray) -> pa.Array:
        return pa.array(x, pa.float64(), from_pandas=True)

    cols: dict[str, pa.Array] = {
        "schema_version": pa.array(np.full(n, SCHEMA_VERSION, np.int16)),
        "event_id": ids, "request_id": ids,
        "start_time": pa.array(start, ts), "first_token_time": pa.array(first, ts),
        "end_time": pa.array(end, ts),
        "key_id": key_id, "key_alias": alias,
        "parent_key_id": parent, "user": user, "team": team, "project": project,
        "kernel_id": kernel_id, "notebook_path": notebook_path, "client": client,
        "provider": provider, "operation": operation, "request_model": model_col,
        "response_model": model_col, "stream": pa.array(stream),
        "status": _dict(status, [s for s, _, _ in STATUSES]),
        "http_status": pa.array(http.astype(np.int16)), "error_type": errtype,
        "error_message": errmsg, "finish_reason": finish,
        "input_tokens": pa.array(inp), "input_uncached_tokens": pa.array(uncached),
        "cache_read_tokens": pa.array(cache_read), "cache_write_tokens": pa.array(cache_write),
        "output_tokens": pa.array(out), "reasoning_tokens": pa.array(reasoning),
        "usage_estimated": pa.array(st == "cancelled"),
        "cost_usd": pa.array(cost), "cost_pico": pa.array(np.rint(cost * 1e12).astype(np.int64)),
        "cost_input_usd": pa.array(c_in), "cost_cache_usd": pa.array(c_cache),
        "cost_output_usd": pa.array(c_out),
        "price_version": _dict(np.zeros(n, np.int64), ["simulated"]),
        "pricing_status": _dict(np.zeros(n, np.int64), ["priced"]),
        "latency_ms": pa.array(latency), "ttft_ms": pa.array(ttft),
        "upstream_latency_ms": pa.array(upstream), "gateway_overhead_ms": pa.array(overhead),
        "request_bytes": pa.array(inp * 4 + 200), "response_bytes": pa.array(out * 5 + 300),
        "prompt_hash": prompt_hash, "prompt_text": pa.nulls(n, pa.string()),
        "budget_warning": pa.nulls(n, pa.string()), "tags": pa.nulls(n, pa.string()),
        "cell_id": cell_id,
        "execution_count": pa.array(np.where(service, 0, rng.integers(1, 200, n)),
                                    pa.int64()),
        "dry_run_cost_usd": nullable_float(dry_cost),
        "dry_run_worst_usd": nullable_float(dry_worst),
    }
    cols["execution_count"] = pa.array(np.where(service, None, cols["execution_count"]
                                                .to_numpy()), pa.int64(), from_pandas=True)
    arrays = [cols[f.name] if pa.types.is_dictionary(cols[f.name].type) else
              cols[f.name].cast(f.type) for f in EVENTS_SCHEMA]
    fields = [f.with_type(a.type) for f, a in zip(EVENTS_SCHEMA, arrays)]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=EVENTS_SCHEMA.metadata))


def spread(counts: np.ndarray, start_hour: int, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    """Entity index and start time (epoch µs, uniform within the hour) per call."""
    flat = counts.ravel()
    cells = np.repeat(np.arange(flat.size), flat)
    entity = cells // counts.shape[1]
    hour = start_hour + cells % counts.shape[1]
    t_us = (hour * 3600 + rng.random(len(cells)) * 3600) * 1e6
    return entity, t_us.astype(np.int64)


@dataclass
class Injected:
    """The inputs (see :func:`events`) and labels of injected anomalies."""

    def add(self, entity: int, t: np.ndarray, **forced: Any) -> None:
        """Queue ``len(t)`` calls of ``entity`` with some inputs forced."""
        n = len(t)
        part = {"entity": np.full(n, entity), "t_us": t.astype(np.int64),
                "input_scale": np.full(n, float(forced.pop("input_scale", 1.0)))}
        for name in ("model", "notebook", "cell", "prompt", "status"):
            value = forced.get(name, -1)
            part[name] = np.broadcast_to(np.asarray(value, np.int64), (n,)).copy()
        self.parts.append(part)

    def inputs(self) -> dict[str, np.ndarray]:
        """All queued inputs concatenated (empty arrays when nothing was injected)."""
        names = ("entity", "t_us", "input_scale", "model", "notebook", "cell", "prompt",
                 "status")
        if not self.parts:
            return {k: np.zeros(0, float if k == "input_scale" else np.int64) for k in names}
        return {k: np.concatenate([p[k] for p in self.parts]) for k in names}

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)  # forced inputs
    labels: list[dict[str, Any]] = field(default_factory=list)
    removed: list[tuple[int, int, int]] = field(default_factory=list)  # entity, t0, t1 (µs)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat().replace("+00:00", "Z")


def inject(fleet: Fleet, counts: np.ndarray, start_hour: int, rng: np.random.Generator,
           per_kind: int, warmup_days: int = 7) -> Injected:
    """Draw labelled anomalies after ``warmup_days``: called by :func:`simulate`."""
    hours = counts.shape[1]
    inj = Injected()
    people = np.flatnonzero(~fleet.is_service)
    services = np.flatnonzero(fleet.is_service)
    lo = warmup_days * 24
    if hours - lo < 24:
        return inj
    mean_rate = counts.mean(axis=1)
    used_models = [set(np.flatnonzero(np.diff(np.concatenate([[0.0], fleet.model_cum[e]])) > 0.02))
                   for e in range(fleet.size)]

    def label(kind: str, e: int, t0: int, t1: int, **detail: Any) -> None:
        inj.labels.append({"kind": kind, "entity_key": fleet.key_of[e],
                           "user": fleet.users[fleet.owner_of[e]],
                           "team": fleet.teams[fleet.team_of[e]], "start": _iso(t0),
                           "end": _iso(t1), **detail})

    def work_hour(e: int) -> int:
        for _ in range(200):  # a weekday working hour of that entity
            h = int(rng.integers(lo, hours - 8))
            if counts[e, max(h - 72, 0):h].sum() and counts[e, h] >= 0:
                local = (start_hour + h + fleet.offset_h[e]) % 24
                dow = ((start_hour + h + fleet.offset_h[e]) // 24 + 3) % 7
                if 10 <= local <= 15 and dow < 5:
                    return h
        return int(rng.integers(lo, hours - 8))

    busy = people[np.argsort(-mean_rate[people])]
    pool = list(rng.permutation(busy[: max(len(busy) // 2, 1)]))
    for kind in ("spend_spike", "runaway_loop", "new_model", "error_spike"):
        for _ in range(per_kind):
            if not pool:
                pool = list(rng.permutation(people))
            e = int(pool.pop())
            h = work_hour(e)
            t0 = (start_hour + h) * 3600 * 10**6
            hourly = max(fleet.rate[e] / 24.0, 1.0)
            if kind == "spend_spike":
                dur = int(rng.integers(2, 6))
                m = int(max(used_models[e], key=lambda j: MODELS[MODEL_NAMES[j]][2]))
                n = int(hourly * dur * rng.uniform(5, 9)) + 40
                nb = int(rng.integers(0, len(NOTEBOOKS)))
                t = t0 + (rng.random(n) * dur * 3600e6).astype(np.int64)
                inj.add(e, t, model=m, notebook=nb, input_scale=3.0, status=0)
                label(kind, e, t0, t0 + dur * 3600 * 10**6, model=MODEL_NAMES[m],
                      notebook=f"work/{NOTEBOOKS[nb]}")
            elif kind == "runaway_loop":
                dur_s = float(rng.uniform(15, 60)) * 60
                n = int(rng.integers(80, 400))
                t = t0 + np.sort(rng.random(n) * dur_s * 1e6).astype(np.int64)
                inj.add(e, t, model=0, notebook=0, cell=3, prompt=999, status=0)
                label(kind, e, t0, t0 + int(dur_s * 1e6), notebook=f"work/{NOTEBOOKS[0]}")
            elif kind == "new_model":
                dur = int(rng.integers(2, 8))
                m = MODEL_NAMES.index("claude-opus-4-0")
                n = int(rng.integers(10, 40))
                t = t0 + (rng.random(n) * dur * 3600e6).astype(np.int64)
                inj.add(e, t, model=m, status=0)
                label(kind, e, t0, t0 + dur * 3600 * 10**6, model=MODEL_NAMES[m])
            else:  # error_spike
                dur = int(rng.integers(2, 4))
                n = int(hourly * dur * 1.5) + 25
                t = t0 + (rng.random(n) * dur * 3600e6).astype(np.int64)
                st = rng.choice([1, 2, 3], n, p=[0.2, 0.7, 0.1])
                inj.add(e, t, status=st)
                label(kind, e, t0, t0 + dur * 3600 * 10**6, status="upstream_error")
    for e in rng.permutation(services)[:per_kind]:  # a steady service key goes silent
        h = int(rng.integers(lo, hours - 36))
        t0 = (start_hour + h) * 3600 * 10**6
        t1 = t0 + int(rng.integers(18, 36)) * 3600 * 10**6
        inj.removed.append((int(e), t0, t1))
        label("spend_drop", int(e), t0, t1)
    return inj


_NO_DICTIONARY = {"event_id", "request_id", "start_time", "first_token_time", "end_time"}
DICTIONARY_COLUMNS = [f.name for f in EVENTS_SCHEMA if f.name not in _NO_DICTIONARY]


def _write_day(table: pa.Table, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    # store_schema=False: readers see plain strings (the Parquet logical types), whether
    # the column was dictionary-encoded in memory or not
    pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20,
                   use_dictionary=DICTIONARY_COLUMNS, store_schema=False)
    os.replace(tmp, target)


def write_warehouse(table: pa.Table, out: str | os.PathLike, name: str | None = None,
                    progress: Callable[[int], None] | None = None) -> list[Path]:
    """Write events as ``<out>/events/date=YYYY-MM-DD/<name>.parquet`` (sorted by start
    time, written under a temporary name and renamed). Returns the files.

    ``name`` defaults to ``sim-<µs now>``: not a gateway segment name, so the gateway's
    compaction never takes it for one of its own and readers list it like any file."""
    root = Path(out)
    name = name or f"sim-{time.time_ns() // 1000:017d}"
    start = table["start_time"].cast(pa.int64()).to_numpy()
    if start.size and np.any(np.diff(start) < 0):
        table = table.combine_chunks().take(pa.array(np.argsort(start, kind="stable")))
    start = table["start_time"].cast(pa.int64()).to_numpy()
    day = start // (86400 * 10**6)
    bounds = np.flatnonzero(np.diff(day)) + 1
    edges = np.concatenate([[0], bounds, [len(day)]]).astype(np.int64)
    files = []
    for a, b in zip(edges[:-1], edges[1:]):
        d = datetime.fromtimestamp(int(day[a]) * 86400, timezone.utc).strftime("%Y-%m-%d")
        target = root / "events" / f"date={d}" / f"{name}.parquet"
        _write_day(table.slice(int(a), int(b - a)), target)
        files.append(target)
        if progress:
            progress(int(b - a))
    return files


def materialize(fleet: Fleet, counts: np.ndarray, start_hour: int, rng: np.random.Generator,
                inj: Injected | None = None,
                call_scale: Callable[[np.ndarray], np.ndarray] | None = None) -> pa.Table:
    """Rows for hourly ``counts`` (entity x hour from ``start_hour``) plus what ``inj``
    injects or removes, in time order. ``call_scale(entity)`` may give each background
    call an input-size multiplier (the benchmarks draw heavy tails with it). Called by
    :func:`simulate` and ``benchmarks/anomalies.py``."""
    inj = inj or Injected()
    entity, t_us = spread(counts, start_hour, rng)
    for e, t0, t1 in inj.removed:
        keep = ~((entity == e) & (t_us >= t0) & (t_us < t1))
        entity, t_us = entity[keep], t_us[keep]
    extra = inj.inputs()
    n0 = len(entity)
    entity = np.concatenate([entity, extra["entity"]])
    t_us = np.concatenate([t_us, extra["t_us"]])
    order = np.argsort(t_us, kind="stable")  # sort the inputs, not the (string) rows

    def col(name: str) -> np.ndarray:
        fill = 1.0 if name == "input_scale" else -1
        head = np.full(n0, fill, extra[name].dtype)
        if name == "input_scale" and call_scale is not None:
            head = call_scale(entity[:n0])
        return np.concatenate([head, extra[name]])[order]

    table = events(fleet, entity[order], t_us[order], rng, model=col("model"),
                   notebook=col("notebook"), cell=col("cell"), prompt=col("prompt"),
                   status=col("status"), input_scale=col("input_scale"))
    return table


@dataclass
class Simulation:
    """What :func:`simulate` made: the events, the fleet and the anomaly labels."""

    table: pa.Table
    fleet: Fleet
    labels: list[dict[str, Any]]
    start: datetime
    end: datetime
    files: list[Path] = field(default_factory=list)


def simulate(days: int = 30, users: int = 40, teams: int = 5, *, seed: int = 0,
             anomalies: bool = False, out: str | os.PathLike | None = None,
             end: datetime | None = None, calls_per_day: float = 60.0,
             service_share: float = 0.2, progress: bool = False) -> Simulation:
    """Simulate ``days`` of traffic ending at ``end`` (default: the current UTC hour).

    With ``out``, writes the warehouse layout there (and ``anomalies.json`` with
    ``anomalies=True``). ``progress`` shows a tqdm bar of rows written.
    """
    rng = np.random.default_rng(seed)
    if end is None:
        end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    end_hour = int(end.timestamp() // 3600)
    hours = days * 24
    start_hour = end_hour - hours
    fleet = make_fleet(users, teams, rng, service_share, calls_per_day)
    counts = hourly_counts(fleet, start_hour, hours, rng)
    # some people join late: a short history is normal (a key a few days old)
    late = np.flatnonzero((rng.random(fleet.size) < 0.1) & ~fleet.is_service)
    for e in late:
        counts[e, : int(rng.integers(hours // 2, max(hours - 72, hours // 2 + 1)))] = 0
    inj = inject(fleet, counts, start_hour, rng, max(1, users // 10),
                 warmup_days=min(7, days // 3)) if anomalies else Injected()
    table = materialize(fleet, counts, start_hour, rng, inj)
    sim = Simulation(table, fleet, inj.labels,
                     datetime.fromtimestamp(start_hour * 3600, timezone.utc), end)
    if out is not None:
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=table.num_rows, unit=" events", desc="writing")
        sim.files = write_warehouse(table, out, progress=bar.update if bar else None)
        if bar:
            bar.close()
        if anomalies:
            (Path(out) / LABELS_FILE).write_text(json.dumps(inj.labels, indent=1) + "\n")
    return sim


def read_labels(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The labels :func:`simulate` wrote beside a simulated warehouse (empty if none)."""
    path = Path(out) / LABELS_FILE
    return json.loads(path.read_text()) if path.exists() else []
