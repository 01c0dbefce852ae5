"""How a verdict looks to the outside: the CLI's --json and the hooks API share it."""

from __future__ import annotations

from typing import Any

from orchestrator.core.lifecycle import Verdict


def verdict_json(service: str, verdict: Verdict, policy: str) -> dict[str, Any]:
    return {
        "service": service,
        "policy": policy,
        "at": verdict.at.isoformat(),
        "phase": verdict.phase.value,
        "good_standing": verdict.good_standing,
        "next_transition": verdict.next_at.isoformat() if verdict.next_at else None,
        "reasons": [
            {
                "owner": r.owner.value,
                "detail": r.detail,
                "since": r.since.isoformat(),
                "until": r.until.isoformat() if r.until else None,
            }
            for r in verdict.reasons
        ],
        "undo": list(verdict.undo),
        "attention": list(verdict.attention),
        "timeline": [
            {
                "at": e.at.isoformat(),
                "day": e.at.date().isoformat(),
                "step": e.step.value,
                "phase": e.phase.value,
                "method": e.method,
                "clause": e.clause,
                "reached": e.blocked_by is None and e.at <= verdict.at,
                "blocked_by": e.blocked_by,
                "delayed_by": e.delayed_by,
                "planned": e.planned_at.isoformat() if e.planned_at else None,
                "if_paid_after": list(e.if_paid),
                "note": e.note,
            }
            for e in verdict.timeline
        ],
    }
