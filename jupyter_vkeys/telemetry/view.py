"""What telemetry reads of the gateway it watches.

:class:`GatewayView` is the part of :class:`jupyter_vkeys.gateway.core.VKeysGateway`
that :class:`~jupyter_vkeys.telemetry.Telemetry`, the metrics and the readiness check
read: its telemetry settings and the state gauges are taken from. Telemetry is typed
against this view rather than the gateway, so the gateway can own its telemetry without
an import circle.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

from ..http.upstream import Transport
from ..policy import PolicyEngine
from ..registry import KeyRegistry
from ..warehouse.sink import EventSink


class GatewayView(Protocol):
    """A started gateway, as telemetry sees it (settings are ``c.VKeysGateway`` traits)."""

    # settings
    access_log: bool
    access_log_file: str
    access_log_format: str
    metrics: bool
    metrics_per_key: bool
    ready_writer_grace: float
    tracing: bool
    warehouse: bool
    data_dir: str
    # state read at scrape or probe time
    registry: KeyRegistry | None
    policy: PolicyEngine | None
    sink: EventSink
    transports: Mapping[str, Transport]
    lock: Any  # runtime.DataDirLock, held while the gateway runs
    telemetry: Any  # the Telemetry this view feeds
