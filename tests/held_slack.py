"""The Slack stand-in with its replies held: lives in `harness.held_slack` (the end-to-end
harness holds replies too); re-exported here for the tests."""

from harness.held_slack import HeldSlack

__all__ = ["HeldSlack"]
