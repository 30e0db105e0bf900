"""The OpenAPI 3.0 description of the admin API, served at ``{prefix}/api/openapi.json``.

Hand-written, so it says what the API promises rather than what a framework guessed:
every route, the policy and key shapes with the bounds the validation enforces
(:mod:`jupyter_vkeys.policy.spec`, :mod:`jupyter_vkeys.registry`), the error shape, and
the two ways to authenticate (the admin token standalone, a virtual key for ``/me``;
inside Jupyter the server's own authentication replaces the admin token). The test suite
fuzzes the running API against it (``tests/test_admin_fuzz.py``), so it stays accurate.

:func:`openapi_document` is called by :class:`OpenApiHandler` on each request.
"""

from __future__ import annotations

from typing import Any

import orjson
import tornado.web

from .._version import __version__
from ..policy.spec import (LIMITS, MAX_ALIASES, MAX_BUDGET_USD, MAX_MODELS, MAX_NAME_CHARS,
                           NAME_PATTERN, PERIODS)
from ..registry import (MAX_ALIAS_CHARS, MAX_GRACE_SECONDS, MAX_KEY_ID_CHARS,
                        MAX_METADATA_BYTES, MAX_METADATA_DEPTH, MAX_TIME, MIN_TIME)
from ..runtime import MAX_AUDIT_LIMIT, MAX_SEQ
from .dataplane import public_endpoint

__all__ = ["openapi_document", "OpenApiHandler"]


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("Error")}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


NAME = {"type": "string", "pattern": f"^(|{NAME_PATTERN})$", "maxLength": 128,
        "description": "Empty, or 1-128 characters without whitespace, '/' or control "
                       "characters (it names the scope user:<owner>, team:<team>...)."}
MODEL_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS,
              "pattern": "^[^\\x00-\\x1f\\x7f]+$"}
TIME = {"oneOf": [{"type": "number", "minimum": MIN_TIME, "maximum": MAX_TIME},
                  {"type": "string", "format": "date-time"},
                  {"type": "string", "enum": [""]}],
        "nullable": True,
        "description": "Epoch seconds or RFC 3339 text, 0001-01-01 to 9999-12-31; null or "
                       "empty: never expires."}

POLICY_PROPERTIES: dict[str, Any] = {
    "models": _nullable({"type": "array", "maxItems": MAX_MODELS, "items": MODEL_NAME,
                         "description": "Allowlist of model names or globs; null: any."}),
    "aliases": _nullable({"type": "object", "maxProperties": MAX_ALIASES,
                          "additionalProperties": MODEL_NAME,
                          "description": "Name a client sends -> model used."}),
    **{name: _nullable({"type": "integer", "minimum": 0, "maximum": limit})
       for name, limit in LIMITS.items()},
    "budgets": _nullable({"type": "array", "maxItems": len(PERIODS),
                          "items": _ref("Budget"),
                          "description": "At most one budget per period."}),
}

BUDGET_LIMIT = {
    "usd": {"type": "number", "minimum": 0, "maximum": int(MAX_BUDGET_USD)},
    "period": {"type": "string", "enum": list(PERIODS)},
    "soft": _nullable({"type": "number", "exclusiveMinimum": True, "minimum": 0,
                       "maximum": 1, "description": "Warn when this fraction is spent."}),
}

KEY_PROPERTIES: dict[str, Any] = {
    "alias": _nullable({"type": "string", "maxLength": MAX_ALIAS_CHARS,
                        "pattern": "^[^\\x00-\\x1f\\x7f]*$"}),
    "owner": _nullable(NAME), "team": _nullable(NAME), "project": _nullable(NAME),
    "expires_at": TIME,
    "metadata": _nullable({"type": "object", "description": (
        f"Free JSON object, at most {MAX_METADATA_DEPTH} levels deep and "
        f"{MAX_METADATA_BYTES} bytes.")}),
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type"],
            "properties": {"message": {"type": "string",
                                       "description": "What was wrong: the field, the "
                                                      "problem and the limit."},
                           "type": {"type": "string"}}}}},
    "Budget": {"type": "object", "additionalProperties": False, "required": ["usd"],
               "properties": BUDGET_LIMIT},
    "Policy": {"type": "object", "additionalProperties": False,
               "properties": POLICY_PROPERTIES},
    "KeyCreate": {
        "type": "object", "additionalProperties": False,
        "properties": {
            **KEY_PROPERTIES,
            "parent_id": _nullable({"type": "string", "maxLength": MAX_KEY_ID_CHARS,
                                    "description": "Parent key id: the child spends "
                                                   "against its budgets."}),
            **POLICY_PROPERTIES}},
    "KeyPatch": {
        "type": "object", "additionalProperties": False,
        "description": "Key and policy fields to change (parent_id cannot change).",
        "properties": {**KEY_PROPERTIES, **POLICY_PROPERTIES}},
    "BudgetReport": {
        "type": "object", "required": ["usd", "period", "resets_at"],
        "properties": {**BUDGET_LIMIT,
                       "spent_usd": {"type": "number"}, "held_usd": {"type": "number"},
                       "remaining_usd": {"type": "number"},
                       "window_start": _nullable({"type": "string"}),
                       "resets_at": _nullable({"type": "string", "description":
                                               "null for a total budget (never resets)"}),
                       "warned": {"type": "boolean"}}},
    "ScopeReport": {
        "type": "object", "required": ["scope", "policy", "budgets"],
        "properties": {
            "scope": {"type": "string"}, "policy": _ref("Policy"),
            "budgets": {"type": "array", "items": _ref("BudgetReport")},
            "requests_last_minute": {"type": "integer"},
            "tokens_last_minute": {"type": "integer"}, "in_flight": {"type": "integer"},
            "figures": {"type": "string", "enum": ["shared", "replica"], "description": (
                "Only with a shared ledger (state_url): shared when the budgets' spend and "
                "holds were read from it (the same on every replica), replica when it did "
                "not answer and they are this replica's own share (figures_note says why). "
                "Requests, tokens and in_flight are this replica's own counts.")},
            "figures_note": {"type": "string"},
            "visibility": {"type": "string", "enum": ["full", "limits"], "description": (
                "On /me only: full for the caller's key, its parent and its user; limits "
                "(no spend) for its team and project.")}}},
    "Key": {
        "type": "object",
        "required": ["id", "alias", "owner", "team", "project", "parent_id", "created_at",
                     "expires_at", "revoked_at", "metadata", "policy", "state"],
        "properties": {
            "id": {"type": "string"}, "alias": {"type": "string"},
            "owner": {"type": "string"}, "team": {"type": "string"},
            "project": {"type": "string"}, "parent_id": {"type": "string"},
            "created_at": {"type": "number"},
            "expires_at": _nullable({"type": "number"}),
            "revoked_at": _nullable({"type": "number"}),
            "metadata": {"type": "object"}, "policy": _ref("Policy"),
            "previous_secret_valid_until": _nullable({"type": "number"}),
            "state": {"type": "string", "enum": ["active", "revoked", "expired"]}}},
    "KeyReport": {"allOf": [_ref("Key"), {
        "type": "object", "required": ["limits"],
        "properties": {"limits": {"type": "array", "items": _ref("ScopeReport")}}}]},
    "KeyWithToken": {"allOf": [_ref("KeyReport"), {
        "type": "object", "required": ["key"],
        "properties": {"key": {"type": "string", "pattern": "^vk-",
                               "description": "The token; shown this once only."}}}]},
    "AuditRow": {
        "type": "object", "required": ["seq", "ts", "actor", "action", "target"],
        "properties": {"seq": {"type": "integer"}, "ts": {"type": "number"},
                       "actor": {"type": "string"},
                       "action": {"type": "string", "enum": [
                           "key.create", "key.update", "key.revoke", "key.rotate",
                           "policy.set", "policy.delete"]},
                       "target": {"type": "string"},
                       "before": _nullable({"type": "object"}),
                       "after": _nullable({"type": "object"})}},
    "Health": {"type": "object", "required": ["status", "version"],
               "properties": {"status": {"type": "string"}, "version": {"type": "string"},
                              "providers": {"type": "object", "additionalProperties":
                                            {"type": "string"}},
                              "keys": {"type": "integer"}}},
}

ADMIN = [{"adminToken": []}]
UNAUTHORIZED = _error("No or wrong admin credentials (standalone: 401; inside Jupyter: "
                      "403 for a user who is not a gateway admin).")
FORBIDDEN = _error("Authenticated, but not a gateway admin (inside Jupyter).")
BAD = _error("Invalid input; nothing was changed.")
MISSING = _error("No such key.")
KEY_ID = {"name": "id", "in": "path", "required": True,
          "schema": {"type": "string", "minLength": 1, "maxLength": 200}}
SCOPE = {"name": "scope", "in": "path", "required": True,
         "schema": {"type": "string",
                    "pattern": f"^(global|(user|team|project):{NAME_PATTERN})$"},
         "description": "global, user:<name>, team:<name> or project:<name> "
                        "(key:<id> for GET only)."}


def _admin(operation: dict[str, Any], *, not_found: bool = False,
           bad: bool = True) -> dict[str, Any]:
    responses = operation.setdefault("responses", {})
    responses.setdefault("401", UNAUTHORIZED)
    responses.setdefault("403", FORBIDDEN)
    responses.setdefault("503", _error("The gateway is still starting."))
    if bad:
        responses.setdefault("400", BAD)
    if not_found:
        responses.setdefault("404", MISSING)
    return {"security": ADMIN, **operation}


def openapi_document(api_url: str = "/vkeys/api") -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of the admin API below ``api_url`` (``{prefix}/api``)."""
    key_filters = [{"name": name, "in": "query", "required": False, "schema": NAME}
                   for name in ("owner", "team", "project")]
    key_filters += [{"name": "state", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["active", "revoked", "expired"]}},
                    {"name": "parent_id", "in": "query", "required": False,
                     "schema": {"type": "string", "maxLength": MAX_KEY_ID_CHARS}}]
    paths: dict[str, Any] = {
        "/health": {"get": {"summary": "Liveness and which providers are real or fake",
                            "security": [], "responses": {"200": _ok(_ref("Health"))}}},
        "/ready": {"get": {  # telemetry: readiness (jupyter_vkeys.telemetry.readiness)
            "summary": "Readiness: data directory held, registry loaded, journal writable, "
                       "warehouse writer alive",
            "security": [],
            "responses": {"200": _ok({"type": "object", "required": ["status"],
                                      "properties": {"status": {"const": "ready"}}}),
                          "503": {"description": "Not ready: each failing part named",
                                  "content": {"application/json": {"schema": {
                                      "type": "object", "required": ["failing"],
                                      "properties": {"failing": {
                                          "type": "object",
                                          "additionalProperties": {"type": "string"}}}}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [],
                                  "responses": {"200": _ok({"type": "object"})}}},
        "/me": {"get": {
            "summary": "The calling virtual key: its record and its own scopes' limits",
            "security": [{"virtualKey": []}],
            "responses": {"200": _ok(_ref("KeyReport")),
                          "400": _error("A header the server cannot take (for example "
                                        "'Authorization: Bearer ' with nothing after it)."),
                          "401": _error("No, malformed, unknown, revoked or expired key.")}}},
        "/me/calls": {"get": {
            "summary": "The calling key's owner's recent calls, newest first (from the "
                       "gateway's in-memory ring since it started; the warehouse has all)",
            "security": [{"virtualKey": []}],
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
            "responses": {"200": _ok({"type": "object", "required": ["calls"], "properties": {
                              "owner": {"type": "string"}, "source": {"type": "string"},
                              "note": {"type": "string"},
                              "calls": {"type": "array", "items": {"type": "object"}}}}),
                          "400": _error("limit is not an integer from 1 to 1000, or an "
                                        "unknown query parameter."),
                          "401": _error("No, malformed, unknown, revoked or expired key.")}}},
        "/cells": {"post": {
            "summary": "A kernel's cell starts (its key's calls belong to it) or ends (its "
                       "summary: calls, tokens, cost, dry-run estimates, tightest budget)",
            "security": [{"virtualKey": []}],
            "requestBody": _json_body({
                "type": "object", "required": ["action"], "properties": {
                    "action": {"type": "string", "enum": ["start", "end"]},
                    "cell_id": {"type": "string", "maxLength": 256},
                    "execution_count": _nullable({"type": "integer", "minimum": 0}),
                    "dry_run": {"type": "boolean"}}}),
            "responses": {"200": _ok({"type": "object"}),
                          "400": _error("A field is not what the action needs."),
                          "401": _error("No, malformed, unknown, revoked or expired key.")}}},
        "/estimate": {"post": {
            "summary": "What one call would cost (expected, worst case) and whether the "
                       "key's limits admit it, without making it",
            "security": [{"virtualKey": []}],
            "requestBody": _json_body({
                "type": "object", "required": ["body"], "properties": {
                    "operation": {"type": "string", "enum": [
                        "chat.completions", "completions", "responses", "embeddings",
                        "messages", "messages.count_tokens"]},
                    "body": {"type": "object", "required": ["model"],
                             "properties": {"model": {"type": "string"}}}}}),
            "responses": {"200": _ok({"type": "object"}),
                          "400": _error("The call's body is not one a provider accepts."),
                          "401": _error("No, malformed, unknown, revoked or expired key.")}}},
        "/keys": {
            "get": _admin({"summary": "List keys", "parameters": key_filters,
                           "responses": {"200": _ok({
                               "type": "object", "required": ["keys"],
                               "properties": {"keys": {"type": "array",
                                                       "items": _ref("Key")}}})}}),
            "post": _admin({"summary": "Create a key (key fields and policy fields)",
                            "requestBody": _json_body(_ref("KeyCreate"), required=False),
                            "responses": {"201": _ok(_ref("KeyWithToken"), "Created")}})},
        "/keys/{id}": {
            "parameters": [KEY_ID],
            "get": _admin({"summary": "A key with its limits and spend",
                           "responses": {"200": _ok(_ref("KeyReport"))}}, not_found=True),
            "patch": _admin({"summary": "Change key and policy fields (null removes a limit)",
                             "requestBody": _json_body(_ref("KeyPatch"), required=False),
                             "responses": {"200": _ok(_ref("KeyReport"))}}, not_found=True)},
        "/keys/{id}/revoke": {
            "parameters": [KEY_ID],
            "post": _admin({"summary": "Revoke a key now (idempotent)",
                            "responses": {"200": _ok(_ref("KeyReport"))}}, not_found=True)},
        "/keys/{id}/rotate": {
            "parameters": [KEY_ID],
            "post": _admin({"summary": "New secret; the old one stays valid grace_seconds",
                            "requestBody": _json_body({
                                "type": "object", "additionalProperties": False,
                                "properties": {"grace_seconds": _nullable({
                                    "type": "number", "minimum": 0,
                                    "maximum": MAX_GRACE_SECONDS})}}, required=False),
                            "responses": {"200": _ok(_ref("KeyWithToken"))}},
                           not_found=True)},
        "/policies": {"get": _admin({"summary": "Every scope policy with its spend",
                                     "responses": {"200": _ok({
                                         "type": "object", "required": ["policies"],
                                         "properties": {"policies": {
                                             "type": "array",
                                             "items": _ref("ScopeReport")}}})}}, bad=False)},
        "/policies/{scope}": {
            "parameters": [SCOPE],
            "get": _admin({"summary": "Policy, spend, holds and resets of a scope",
                           "responses": {"200": _ok(_ref("ScopeReport"))}}),
            "put": _admin({"summary": "Replace a scope policy",
                           "requestBody": _json_body(_ref("Policy"), required=False),
                           "responses": {"200": _ok(_ref("ScopeReport"))}}),
            "patch": _admin({"summary": "Change fields of a scope policy",
                             "requestBody": _json_body(_ref("Policy"), required=False),
                             "responses": {"200": _ok(_ref("ScopeReport"))}}),
            "delete": _admin({"summary": "Remove a scope policy (idempotent)",
                              "responses": {"200": _ok(_ref("ScopeReport"))}})},
        "/audit": {"get": _admin({
            "summary": "Admin actions after a sequence number, oldest first",
            "parameters": [
                {"name": "since", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_AUDIT_LIMIT}}],
            "responses": {"200": _ok({"type": "object", "required": ["audit"],
                                      "properties": {"audit": {
                                          "type": "array", "items": _ref("AuditRow")}}})}})},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "jupyter-vkeys admin API", "version": __version__,
                 "description": "Virtual keys, scope policies and the audit trail of one "
                                "gateway. Every refusal is an Error naming the field, the "
                                "problem and the limit; a refused change changes nothing."},
        "servers": [{"url": api_url}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "description": (
                    "Standalone: the admin token (<data_dir>/admin_token or "
                    "$VKEYS_ADMIN_TOKEN). Inside Jupyter: the server's own authentication "
                    "(token or cookie) of a gateway admin (c.VKeysApp.admin_users).")},
                "virtualKey": {"type": "http", "scheme": "bearer",
                               "description": "A virtual key, vk-<id>_<secret>."}}},
    }


class OpenApiHandler(tornado.web.RequestHandler):
    """``GET {prefix}/api/openapi.json``: the document, for anyone (it holds no secret).
    Its server URL is the path it was asked at (so it is right under any base_url)."""

    def check_xsrf_cookie(self) -> None:
        """GET only; nothing to protect."""

    @public_endpoint
    def get(self) -> None:
        self.set_header("content-type", "application/json")
        api_url = self.request.path[:-len("/openapi.json")]
        self.finish(orjson.dumps(openapi_document(api_url)))
