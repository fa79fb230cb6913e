"""The cap on exec and run sessions: past it, both are refused with 429 and a clear error, and served again once
a session ends. The processes service runs on a real uvicorn over the real local provider (SQLite under a
temporary data dir, the Docker Engine for the processes it is asked about)."""

from __future__ import annotations

from pathlib import Path

from services import processes
from services.processes.settings import ProcessesSettings
from shared.limits import Slots
from tests.conftest import local_provider, local_settings, on_uvicorn
from tests.test_limits import refused


async def test_exec_and_run_sessions_past_their_cap_are_refused_with_429(tmp_path: Path, api_engine: str) -> None:
    provider = local_provider(tmp_path)
    app = processes.create_app(
        local_settings(tmp_path),
        provider,
        internal=False,
        processes=ProcessesSettings(max_sessions=1),
    )
    sessions = app.state.sessions
    assert isinstance(sessions, Slots)
    async with on_uvicorn(app) as port:
        await provider.apps.create("myapp")
        base = f"ws://127.0.0.1:{port}/apps/myapp"
        sessions.take()  # simulated: one session is open
        for path in ("/processes/0123456789ab/exec?command=sh", "/services/web/processes?command=sh"):
            status, error = await refused(base + path)
            assert (status, error[:39]) == (429, "too many exec and run sessions at once ")
        sessions.give()
        status, error = await refused(base + "/processes/0123456789ab/exec?command=sh")
        assert (status, error) == (404, "no such process: 0123456789ab")  # past the cap: the provider has none
        assert sessions.used == 0
