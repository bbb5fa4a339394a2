"""What the campaign tests expect of a run with membership changes."""

from __future__ import annotations

from chaos.campaign import CampaignResult


def assert_members_replaced(result: CampaignResult) -> None:
    """Members were added and removed, and the run ended with the configured size."""
    done = {f.kind for f in result.faults if "removed" in f.note and "failed" not in f.note}
    assert done == {"replace_member", "learner_cycle"}, result.summary()
    # Each round adds one (and the learner is promoted) and removes one.
    assert result.stats["membership_changes"] >= 5, result.summary()
    end = result.stats["members_at_end"]
    assert len(end) == result.config.members, result.summary()
