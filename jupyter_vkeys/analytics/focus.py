"""FOCUS export: the warehouse as a FinOps Open Cost and Usage Specification (1.2) dataset.

Called by ``jupyter vkeys export-focus`` and the ``finops_export`` notebook. One row
per charge: UTC hour x key x model x token class (uncached input, cache reads and writes,
output; a ``usage`` row for cost a foreign writer did not split by class). Costs are
DECIMAL(38, 12) in USD; the gateway prices every call at the provider's list price
(its price table), so BilledCost, EffectiveCost, ContractedCost and ListCost are that
price, and ContractedUnitPrice equals ListUnitPrice: no negotiated rate is known to the
warehouse. No call is covered by a commitment-based discount (reserved or provisioned
throughput is billed by the provider, not through virtual keys), so the
CommitmentDiscount* columns are present and null, as FOCUS requires when
CommitmentDiscountId is null. Token rows are priced per ``1M Tokens``; the ``usage`` row
(cost a foreign writer did not split by class) per ``Requests``. Gateway dimensions
travel as ``x_`` columns (user, team, project, key, parent key, notebook, model, calls)
and as ``Tags``. :mod:`.focus_rules` checks an export against the spec's column rules.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from .queries import period_filter

FOCUS_VERSION = "1.2"

#: The columns FOCUS 1.2 marks Mandatory (present in every export; see the test).
MANDATORY = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass",
    "ChargeDescription", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity", "PricingUnit",
    "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
)
#: Conditional and recommended columns that apply to LLM usage.
CONDITIONAL = (
    "BillingAccountType", "ChargeFrequency", "ConsumedQuantity", "ConsumedUnit",
    "ContractedUnitPrice", "ListUnitPrice", "PricingCategory", "PricingCurrency",
    "ResourceId", "ResourceName", "ResourceType", "ServiceSubcategory", "SkuId",
    "SkuMeter", "SkuPriceId", "SubAccountId", "SubAccountName", "SubAccountType", "Tags",
    "CommitmentDiscountCategory", "CommitmentDiscountId", "CommitmentDiscountName",
    "CommitmentDiscountQuantity", "CommitmentDiscountStatus", "CommitmentDiscountType",
    "CommitmentDiscountUnit", "InvoiceId",
)
X_COLUMNS = ("x_User", "x_Team", "x_Project", "x_KeyId", "x_ParentKeyId", "x_Notebook",
             "x_Model", "x_TokenClass", "x_Calls")
PROVIDER_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic", "fake": "jupyter-vkeys fake"}
MONEY = "DECIMAL(38, 12)"


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def focus_sql(since: datetime | None, until: datetime | None, account_id: str = "jupyter-vkeys",
              account_name: str = "jupyter-vkeys gateway") -> tuple[str, list[Any]]:
    """The SELECT producing the FOCUS rows over ``ev`` for ``[since, until)``."""
    cond, params = period_filter(since, until)
    names = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in PROVIDER_NAMES.items())
    provider = f"CASE provider {names} ELSE coalesce(provider, 'unknown') END"
    sql = f"""
    WITH g AS (
        SELECT date_trunc('hour', start_time) AS h, key_id, parent_key_id, "user", team,
               project, notebook_path, model, {provider} AS pname,
               any_value(key_alias) AS alias, count(*) AS calls,
               coalesce(sum(input_uncached_tokens), 0) AS t_in,
               coalesce(sum(cache_read_tokens), 0)
                   + coalesce(sum(cache_write_tokens), 0) AS t_cache,
               coalesce(sum(output_tokens), 0) AS t_out,
               coalesce(sum(cost_input_usd), 0) AS c_in,
               coalesce(sum(cost_cache_usd), 0) AS c_cache,
               coalesce(sum(cost_output_usd), 0) AS c_out, coalesce(sum(cost_usd), 0) AS c_all
        FROM ev WHERE {cond} AND status IS DISTINCT FROM 'dry_run'
        GROUP BY ALL),
    split AS (
        SELECT *, 'input' AS cls, t_in AS qty, c_in AS cost FROM g
        UNION ALL SELECT *, 'cache', t_cache, c_cache FROM g
        UNION ALL SELECT *, 'output', t_out, c_out FROM g
        UNION ALL SELECT *, 'usage', calls, c_all - c_in - c_cache - c_out FROM g),
    rows AS (
        SELECT *, CASE WHEN cls = 'usage' THEN qty ELSE qty / 1e6 END AS pqty,
               CASE WHEN cls = 'usage' THEN 'Requests' ELSE '1M Tokens' END AS punit,
               CASE WHEN cls = 'usage' THEN 'Requests' ELSE 'Tokens' END AS cunit
        FROM split
        -- a row per token class that was used or cost something; the unsplit remainder
        -- only where it is more than rounding
        WHERE (cls <> 'usage' AND (cost <> 0 OR qty > 0)) OR abs(cost) > 1e-9)
    SELECT
        CAST(cost AS {MONEY}) AS BilledCost,
        {_lit(account_id)} AS BillingAccountId,
        {_lit(account_name)} AS BillingAccountName,
        'Gateway' AS BillingAccountType,
        'USD' AS BillingCurrency,
        date_trunc('month', h) + INTERVAL 1 MONTH AS BillingPeriodEnd,
        date_trunc('month', h) AS BillingPeriodStart,
        'Usage' AS ChargeCategory,
        CAST(NULL AS VARCHAR) AS ChargeClass,
        coalesce(model, 'unknown model') || ' ' || cls || ' tokens via key '
            || coalesce(key_id, '?') AS ChargeDescription,
        'Usage-Based' AS ChargeFrequency,
        h + INTERVAL 1 HOUR AS ChargePeriodEnd,
        h AS ChargePeriodStart,
        CAST(NULL AS VARCHAR) AS CommitmentDiscountCategory,
        CAST(NULL AS VARCHAR) AS CommitmentDiscountId,
        CAST(NULL AS VARCHAR) AS CommitmentDiscountName,
        CAST(NULL AS {MONEY}) AS CommitmentDiscountQuantity,
        CAST(NULL AS VARCHAR) AS CommitmentDiscountStatus,
        CAST(NULL AS VARCHAR) AS CommitmentDiscountType,
        CAST(NULL AS VARCHAR) AS CommitmentDiscountUnit,
        CAST(qty AS {MONEY}) AS ConsumedQuantity,
        cunit AS ConsumedUnit,
        CAST(cost AS {MONEY}) AS ContractedCost,
        CAST(CASE WHEN pqty > 0 THEN cost / pqty ELSE 0 END AS {MONEY}) AS ContractedUnitPrice,
        CAST(cost AS {MONEY}) AS EffectiveCost,
        CAST(NULL AS VARCHAR) AS InvoiceId,
        pname AS InvoiceIssuerName,
        CAST(cost AS {MONEY}) AS ListCost,
        CAST(CASE WHEN pqty > 0 THEN cost / pqty ELSE 0 END AS {MONEY}) AS ListUnitPrice,
        'Standard' AS PricingCategory,
        'USD' AS PricingCurrency,
        CAST(pqty AS {MONEY}) AS PricingQuantity,
        punit AS PricingUnit,
        pname AS ProviderName,
        pname AS PublisherName,
        key_id AS ResourceId,
        alias AS ResourceName,
        'Virtual Key' AS ResourceType,
        'AI and Machine Learning' AS ServiceCategory,
        pname || ' API' AS ServiceName,
        'Generative AI' AS ServiceSubcategory,
        coalesce(pname, '?') || '/' || coalesce(model, '?') || '/' || cls AS SkuId,
        CASE cls WHEN 'input' THEN 'Input Tokens' WHEN 'cache' THEN 'Cached Input Tokens'
                 WHEN 'output' THEN 'Output Tokens' ELSE 'Requests' END AS SkuMeter,
        coalesce(pname, '?') || '/' || coalesce(model, '?') || '/' || cls AS SkuPriceId,
        team AS SubAccountId,
        team AS SubAccountName,
        'Team' AS SubAccountType,
        to_json(struct_pack("user" := "user", team := team, project := project,
                            notebook := notebook_path, model := model)) ::VARCHAR AS Tags,
        "user" AS x_User, team AS x_Team, project AS x_Project, key_id AS x_KeyId,
        parent_key_id AS x_ParentKeyId, notebook_path AS x_Notebook, model AS x_Model,
        cls AS x_TokenClass, calls AS x_Calls
    FROM rows
    ORDER BY ChargePeriodStart, ResourceId, SkuId"""
    return sql, params


def export(con, out: str | os.PathLike, since: datetime | None = None,
           until: datetime | None = None, **account: str) -> int:
    """Write the FOCUS rows to ``out`` (``.parquet`` or ``.csv``, by suffix), under a
    temporary name then renamed. Returns the number of rows."""
    path = Path(out)
    fmt = {".parquet": "PARQUET", ".csv": "CSV"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"--out must end in .parquet or .csv (got {path.name!r})")
    path.parent.mkdir(parents=True, exist_ok=True)
    sql, params = focus_sql(since, until, **account)
    tmp = path.with_name(f".{path.name}.tmp")
    options = "FORMAT PARQUET, COMPRESSION zstd" if fmt == "PARQUET" else "FORMAT CSV, HEADER"
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"COPY ({sql}) TO {_lit(str(tmp))} ({options})", params)
    reader = f"read_{fmt.lower()}({_lit(str(tmp))})"
    rows = con.execute(f"SELECT count(*) FROM {reader}").fetchall()[0][0]
    os.replace(tmp, path)
    return rows


def frame(con, since: datetime | None = None, until: datetime | None = None, **account: str):
    """The FOCUS rows as a Polars DataFrame (the notebook previews it)."""
    sql, params = focus_sql(since, until, **account)
    return con.sql(sql, params=params).pl() if params else con.sql(sql).pl()
