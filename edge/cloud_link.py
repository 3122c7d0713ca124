"""The edge's link to the cloud tier: the escalation client, the policy watcher and the worker health monitor.

Made empty at start (every turn is answered locally) and filled once NATS connects,
so the stages that use it are built once and never patched afterwards.
"""

from __future__ import annotations

from edge.escalation import CloudHealthMonitor, EscalationClient
from edge.policy_watcher import PolicySnapshot, PolicyWatcher
from shared.policy import DEFAULT_POLICY


class CloudLink:
    def __init__(self) -> None:
        self.client: EscalationClient | None = None
        self.watcher: PolicyWatcher | None = None
        self.health: CloudHealthMonitor | None = None

    def attach(self, client: EscalationClient, watcher: PolicyWatcher, health: CloudHealthMonitor) -> None:
        self.client, self.watcher, self.health = client, watcher, health

    @property
    def up(self) -> bool:
        """Connected, and (a frozen leaf keeps its TCP connection) the monitor's pings come back."""
        return self.client is not None and self.client.nc.is_connected and (
            self.health is None or self.health.link_up)

    def healthy(self, model_class: str) -> bool:
        """Worth escalating to: the link is up and (as far as heartbeats tell) a worker has room."""
        if not self.up:
            return False
        # The monitor follows the class the edge started with; a policy that moved to another
        # class is trusted until its escalations fail (they fall back within the timeout anyway).
        if self.health is None or self.health.model_class != model_class:
            return True
        return self.health.snapshot().available

    def policy(self) -> PolicySnapshot:
        return self.watcher.current() if self.watcher else PolicySnapshot(DEFAULT_POLICY, 0)
