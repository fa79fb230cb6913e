"""An app's status comes from its stack's status, mapped as Convox's humanStatus did. Nothing is simulated."""

from __future__ import annotations

import pytest

from shared.provider.aws.stacks import human_status


@pytest.mark.parametrize(
    ("stack", "app"),
    [
        ("CREATE_IN_PROGRESS", "creating"),
        ("CREATE_COMPLETE", "running"),
        ("UPDATE_COMPLETE", "running"),
        ("UPDATE_ROLLBACK_COMPLETE", "running"),
        ("DELETE_FAILED", "running"),
        ("UPDATE_IN_PROGRESS", "updating"),
        ("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "updating"),
        ("UPDATE_ROLLBACK_IN_PROGRESS", "rollback"),
        ("ROLLBACK_IN_PROGRESS", "rollback"),
        ("ROLLBACK_COMPLETE", "failed"),
        ("CREATE_FAILED", "failed"),
        ("UPDATE_ROLLBACK_FAILED", "failed"),
        ("DELETE_IN_PROGRESS", "deleting"),
        ("DELETE_COMPLETE", "deleted"),
        (None, "deleted"),
    ],
)
def test_app_status_follows_the_stack_status(stack: str | None, app: str) -> None:
    assert human_status(stack) == app
