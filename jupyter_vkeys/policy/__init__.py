"""Admission policy: who may call which model, how often, and for how much.

``spec`` parses the one policy shape used everywhere; ``windows`` computes
calendar budget windows; ``limits`` keeps rate and concurrency counters;
``ledger`` keeps budget spend and holds; ``engine`` ties them into one
atomic admission and settlement per call.
"""

from .engine import Admission, PolicyEngine, Refusal, Ticket
from .spec import Budget, Policy, PolicyError, parse_policy

__all__ = ["Admission", "Budget", "Policy", "PolicyEngine", "PolicyError", "Refusal", "Ticket",
           "parse_policy"]
