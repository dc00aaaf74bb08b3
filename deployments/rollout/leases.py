"""Which routers are live and which traffic epoch each has applied: the evidence that a change reached them.

Every router poll carries the router's id and the epoch it serves now. A change (a rollback)
is settled when every router heard from within its lease has acknowledged the new epoch. A
router silent for longer than the lease (plus ``margin_s``) is not waited for: its lease counts
from when it *sent* its last successful poll, so by its own clock it has stopped serving the
split and serves only the fallback variant (:func:`deployments.routing.effective_traffic`), or
it is dead. Either way it sends no caller to the candidate.

This table only knows routers that polled *this* process. Routers that polled a previous
process (a restart) or another controller of the same model may not be in it, and another
controller answers polls from the stored state without writing anything, so this process cannot
tell it is alone. A change is therefore settled only once it is a lease old as well: every
router that could still serve an older split has by then either been told the change or, by its
own clock, failed closed. Pure: callers pass ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass

LEASE_MARGIN_S = 1.0


@dataclass
class RouterSeen:
    at: float
    epoch: int


class RouterLeases:
    def __init__(self) -> None:
        self._seen: dict[str, RouterSeen] = {}

    def heard(self, router_id: str, applied_epoch: int, now: float) -> None:
        self._seen[router_id] = RouterSeen(now, applied_epoch)

    def live(self, now: float, lease_s: float, margin_s: float = LEASE_MARGIN_S) -> dict[str, RouterSeen]:
        """Routers whose lease has not run out: they may still serve whatever split they last applied."""
        return {r: s for r, s in self._seen.items() if now - s.at <= lease_s + margin_s}

    def settled(self, epoch: int, changed_at: float, now: float, lease_s: float | None,
                margin_s: float = LEASE_MARGIN_S) -> bool:
        """Every live router this process knows acknowledged ``epoch`` (changed at ``changed_at``), and no router
        it does not know can still serve an older one: the change is a lease (plus margin) old. Without a lease,
        every router ever heard from must ack."""
        if lease_s is None:
            return all(seen.epoch >= epoch for seen in self._seen.values())
        if not all(seen.epoch >= epoch for seen in self.live(now, lease_s, margin_s).values()):
            return False
        return now >= changed_at + lease_s + margin_s

    def to_dict(self, now: float) -> dict[str, dict[str, float]]:
        return {r: {"seen_s_ago": round(now - s.at, 3), "epoch": s.epoch} for r, s in self._seen.items()}
