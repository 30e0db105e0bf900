"""Checks a FOCUS export against the FOCUS 1.2 column rules that can be checked on data.

Called by ``jupyter vkeys export-focus`` after it wrote a file (it prints what failed and
exits non-zero), by the ``finops_export`` notebook and by the tests, on any Parquet or
CSV file, whoever wrote it. Each rule is one SQL predicate naming the rows that break
it; :func:`check` returns one :class:`Violation` per broken rule, with a count and an
example row, so a finance user sees what is wrong, not that something is.

What is checked: the Mandatory columns are present; costs, prices and quantities are
decimals and periods UTC date/times; the columns FOCUS does not let be null are not;
the allowed values of ChargeCategory, ChargeClass, ChargeFrequency, PricingCategory
and the CommitmentDiscount* categoricals; ChargePeriod within BillingPeriod and start
before end; unit price x PricingQuantity = cost (list and contracted) on usage rows
that are no correction; the CommitmentDiscount* columns null without a
CommitmentDiscountId; units present with their quantities; a three-letter upper-case
currency; Tags a JSON object; every column not in the spec prefixed ``x_``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import duckdb

from .focus import CONDITIONAL, MANDATORY

DECIMAL_COLUMNS = ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost",
                   "PricingQuantity", "ConsumedQuantity", "ListUnitPrice",
                   "ContractedUnitPrice", "CommitmentDiscountQuantity")
DATETIME_COLUMNS = ("BillingPeriodEnd", "BillingPeriodStart", "ChargePeriodEnd",
                    "ChargePeriodStart")
#: Mandatory columns FOCUS 1.2 does not allow to be null (ChargeClass may be).
NOT_NULL = ("BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd",
            "BillingPeriodStart", "ChargeCategory", "ChargeDescription", "ChargePeriodEnd",
            "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName",
            "ListCost", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName")
COMMITMENT_DETAIL = ("CommitmentDiscountCategory", "CommitmentDiscountName",
                     "CommitmentDiscountQuantity", "CommitmentDiscountStatus",
                     "CommitmentDiscountType", "CommitmentDiscountUnit")
#: Relative tolerance of unit price x quantity = cost (decimal rounding of the price).
TOLERANCE = 1e-9
USAGE = "ChargeCategory IN ('Usage', 'Purchase') AND ChargeClass IS DISTINCT FROM 'Correction'"


@dataclass(frozen=True)
class Violation:
    """One broken rule: which, how many rows, and one of them."""

    rule: str
    rows: int
    example: dict[str, Any] | None = None

    def __str__(self) -> str:
        text = f"{self.rule}: {self.rows} row(s)"
        return text + (f", e.g. {self.example}" if self.example else "")


def _allowed(column: str, values: tuple[str, ...], nullable: bool = True) -> str:
    listed = ", ".join("'" + v + "'" for v in values)
    null = f"{column} IS NOT NULL AND " if nullable else ""
    return f"{null}({column} IS NULL OR {column} NOT IN ({listed}))"


def _price_rule(price: str, cost: str) -> str:
    return (f"{USAGE} AND {price} IS NOT NULL AND PricingQuantity IS NOT NULL AND "
            f"abs(CAST({price} AS DOUBLE) * CAST(PricingQuantity AS DOUBLE) "
            f"- CAST({cost} AS DOUBLE)) > {TOLERANCE} * greatest(abs(CAST({cost} AS DOUBLE)), "
            "1e-6)")


def row_rules(columns: set[str]) -> list[tuple[str, str]]:
    """``(rule, predicate of the rows breaking it)`` for the columns present."""
    rules = [(f"{c} must not be null", f"{c} IS NULL") for c in NOT_NULL if c in columns]
    rules += [
        ("ChargeCategory is one of Usage, Purchase, Tax, Credit, Adjustment",
         _allowed("ChargeCategory", ("Usage", "Purchase", "Tax", "Credit", "Adjustment"),
                  nullable=False)),
        ("ChargeClass is null or Correction", _allowed("ChargeClass", ("Correction",))),
        ("ChargePeriodStart is before ChargePeriodEnd",
         "ChargePeriodStart >= ChargePeriodEnd"),
        ("BillingPeriodStart is before BillingPeriodEnd",
         "BillingPeriodStart >= BillingPeriodEnd"),
        ("the charge period lies within the billing period",
         "ChargePeriodStart < BillingPeriodStart OR ChargePeriodEnd > BillingPeriodEnd"),
        ("BillingCurrency is an ISO 4217 code",
         "NOT regexp_full_match(BillingCurrency, '[A-Z]{3}')"),
    ]
    optional = {
        "ChargeFrequency": _allowed("ChargeFrequency", ("One-Time", "Recurring",
                                                        "Usage-Based")),
        "PricingCategory": _allowed("PricingCategory", ("Standard", "Dynamic", "Committed",
                                                        "Other")),
        "CommitmentDiscountCategory": _allowed("CommitmentDiscountCategory",
                                               ("Spend", "Usage")),
        "CommitmentDiscountStatus": _allowed("CommitmentDiscountStatus", ("Used", "Unused")),
        "PricingCurrency": "PricingCurrency IS NOT NULL AND NOT regexp_full_match("
                           "PricingCurrency, '[A-Z]{3}')",
    }
    rules += [(f"{c} takes only the values FOCUS lists", p) for c, p in optional.items()
              if c in columns]
    if "PricingCategory" in columns:
        rules.append(("PricingCategory is set on usage and purchase rows",
                      f"{USAGE} AND PricingCategory IS NULL"))
    if "ListUnitPrice" in columns:
        rules.append(("ListUnitPrice x PricingQuantity = ListCost",
                      _price_rule("ListUnitPrice", "ListCost")))
    if "ContractedUnitPrice" in columns:
        rules += [("ContractedUnitPrice is set on usage and purchase rows",
                   f"{USAGE} AND ContractedUnitPrice IS NULL"),
                  ("ContractedUnitPrice x PricingQuantity = ContractedCost",
                   _price_rule("ContractedUnitPrice", "ContractedCost"))]
    rules += [("PricingUnit is set where PricingQuantity is",
               "PricingQuantity IS NOT NULL AND PricingUnit IS NULL"),
              ("PricingQuantity is set on usage and purchase rows",
               f"{USAGE} AND PricingQuantity IS NULL")]
    if {"ConsumedQuantity", "ConsumedUnit"} <= columns:
        rules += [("ConsumedUnit is set where ConsumedQuantity is",
                   "ConsumedQuantity IS NOT NULL AND ConsumedUnit IS NULL"),
                  ("ConsumedQuantity is null except on usage rows",
                   "ConsumedQuantity IS NOT NULL AND ChargeCategory <> 'Usage'")]
    if "CommitmentDiscountId" in columns:
        rules += [(f"{c} is null without a CommitmentDiscountId",
                   f"CommitmentDiscountId IS NULL AND {c} IS NOT NULL")
                  for c in COMMITMENT_DETAIL if c in columns]
        if "CommitmentDiscountStatus" in columns:
            rules.append(("CommitmentDiscountStatus is set on usage rows a commitment covers",
                          ("CommitmentDiscountId IS NOT NULL AND ChargeCategory = 'Usage' "
                           "AND CommitmentDiscountStatus IS NULL")))
    if "Tags" in columns:
        rules.append(("Tags is a JSON object",
                      ("Tags IS NOT NULL AND (NOT json_valid(Tags) OR json_type(Tags) <> "
                       "'OBJECT')")))
    return rules


def check(path: str | os.PathLike, con: duckdb.DuckDBPyConnection | None = None
          ) -> list[Violation]:
    """Every rule ``path`` (a FOCUS ``.parquet`` or ``.csv``) breaks; empty when none."""
    con = con or duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    text = str(path).replace("'", "''")
    reader = (f"read_csv('{text}', header = true)" if str(path).lower().endswith(".csv")
              else f"read_parquet('{text}')")
    con.execute(f"CREATE OR REPLACE TEMP VIEW focus_rows AS SELECT * FROM {reader}")
    described = con.execute("DESCRIBE focus_rows").fetchall()
    types = {name: kind.upper() for name, kind, *_ in described}
    out: list[Violation] = []
    missing = [c for c in MANDATORY if c not in types]
    if missing:
        out.append(Violation("Mandatory columns present: missing " + ", ".join(missing),
                             len(missing)))
    parquet = not str(path).lower().endswith(".csv")  # CSV carries no types
    if parquet:
        for c in DECIMAL_COLUMNS:
            if c in types and not types[c].startswith("DECIMAL"):
                out.append(Violation(f"{c} is a decimal (found {types[c]})", 1))
        for c in DATETIME_COLUMNS:
            if c in types and types[c] != "TIMESTAMP WITH TIME ZONE":
                out.append(Violation(f"{c} is a UTC date/time (found {types[c]})", 1))
    known = set(MANDATORY) | set(CONDITIONAL)
    foreign = [c for c in types if c not in known and not c.startswith("x_")]
    if foreign:
        out.append(Violation("columns outside the spec start with x_: " + ", ".join(foreign),
                             len(foreign)))
    for rule, predicate in row_rules(set(types)):
        named = {c for c in known if re.search(rf"\b{c}\b", predicate)}
        if named - set(types):
            continue  # a column that is absent: reported above when mandatory
        try:
            (n,) = con.execute(f"SELECT count(*) FROM focus_rows WHERE {predicate}").fetchone()
        except duckdb.Error as exc:  # a column of the wrong type, say
            out.append(Violation(f"{rule} (could not be checked: {exc})", 0))
            continue
        if n:
            row = con.execute(f"SELECT * FROM focus_rows WHERE {predicate} LIMIT 1")
            names = [d[0] for d in row.description]
            example = dict(zip(names, row.fetchone()))
            keep = {k: str(v) for k, v in example.items()
                    if k in predicate or k in ("ChargePeriodStart", "ResourceId", "SkuId")}
            out.append(Violation(rule, int(n), keep))
    return out
