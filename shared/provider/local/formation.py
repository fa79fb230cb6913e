"""Formation on the local provider: roll-outs, scale, restarts, and keeping the counts (adoption after a
restart, reconciliation). What each of them does to the containers is :mod:`shared.provider.local.converger`
(start, health-check, switch the balancers, retire); the balancer listeners of the public types are
:mod:`shared.provider.local.listeners`.

Each process type of the active release runs ``count`` containers (the manifest's scale, with the
``formation`` table's overrides on top). A roll-out that fails or is cancelled leaves the previous release
serving; one cut short by a restart of the rack is finished by the adoption that follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shared.errors import BadRequest, Conflict, NotFound, RackError, Unavailable
from shared.logfmt import Logger
from shared.models import App, Formation, FormationUpdate, Release
from shared.provider.local.applocks import AppLock, AppLocks
from shared.provider.local.apps import LocalApps
from shared.provider.local.balancers import Balancers
from shared.provider.local.certificates import AppCertificates
from shared.provider.local.converger import ALIVE, LABEL_MEMORY, Converger, Retirement
from shared.provider.local.desired import Desired, desired_processes, manifest_of
from shared.provider.local.docker import LABEL_APP, LABEL_ONEOFF, LABEL_RACK, LABEL_RELEASE, LABEL_TYPE, Docker
from shared.provider.local.events import Events
from shared.provider.local.health import HealthChecks
from shared.provider.local.listeners import Listeners
from shared.provider.local.operations import Operations
from shared.provider.local.releases import LocalReleases
from shared.provider.local.state import State
from shared.provider.local.volumes import Volumes
from shared.provider.workers import Loop

log = Logger("formation")
REFRESH_SECONDS = 2.0
RECONCILE_SECONDS = 10.0
"""How often formation is checked without an Engine event (the event stream may be down)."""
RECONCILE_DEBOUNCE = 0.5
INTERRUPTED = "interrupted by a restart of the rack"


class LocalFormation:
    def __init__(
        self,
        state: State,
        docker: Docker,
        apps: LocalApps,
        releases: LocalReleases,
        rack: str,
        balancer_host: str,
        lb: Balancers,
        certificates: AppCertificates,
        locks: AppLocks,
    ) -> None:
        self.state = state
        self.docker = docker
        self.apps = apps
        self.releases = releases
        self.rack = rack
        self.balancer_host = balancer_host
        self.network = f"convox-{rack}"
        self.certificates = certificates
        self.listeners = Listeners(state, docker, lb, certificates, balancer_host, self.network)
        self.locks = locks
        """Each app's lock, held across the rack's processes (a scale in the apps service, a roll-out here)."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.damaged: set[str] = set()
        """Apps skipped at start (their records are damaged): not reconciled."""
        self.pending: set[str] = set()
        """Apps whose reconciliation is about to run (one pass for a burst of events)."""
        self.rolling: dict[str, asyncio.Task[None]] = {}
        """The roll-out in progress per app (what `convox apps cancel` stops)."""
        self.operations = Operations()
        """What users asked of each app that is in progress in this process (what makes a promote or a restart
        a Conflict, where the rack's own passes holding the app's lock do not)."""
        self.ask_cancel: Callable[[str], Awaitable[App]] | None = None
        """How a cancel reaches a roll-out that runs in another process (:mod:`shared.provider.local.promotions`)."""
        self.closing = False
        """The service is stopping: a roll-out cut short now is interrupted (adoption finishes it), not cancelled."""
        self.events = Events(state)
        self.volumes = Volumes(docker, rack)
        self.health = HealthChecks(docker, self.network, self.events)
        self.converger = Converger(docker, rack, self.network, self.listeners, self.volumes, self.health)
        self.switching = self.converger.switching
        """Apps whose roll-out has switched its balancers: too late to cancel."""
        releases.formation = self

    # ---- desired state -------------------------------------------------------------------------

    async def _overrides(self, app: str) -> dict[str, dict[str, Any]]:
        rows = await self.state.fetch_all("SELECT * FROM formation WHERE app = ?", (app,))
        return {row["service"]: dict(row) for row in rows}

    async def desired(self, release: Release, patch: dict[str, FormationUpdate] | None = None) -> list[Desired]:
        """What each process type of ``release`` should run: the manifest's scale, the saved overrides on
        top, then ``patch`` (a change being tried, saved only once it runs)."""
        return desired_processes(release, self.rack, await self._overrides(release.app), patch)

    async def converge(
        self,
        release: Release,
        only: str | None = None,
        patch: dict[str, FormationUpdate] | None = None,
        fresh: bool = False,
    ) -> None:
        """Make the app run ``release`` (every process type, or the one type ``only``) as :meth:`desired`
        says with ``patch`` on top (:meth:`Converger.converge`; ``fresh`` replaces even the processes that run
        the release already)."""
        wanted = [w for w in await self.desired(release, patch) if only is None or w.service == only]
        await self.converger.converge(release, wanted, only, fresh)

    async def serve(self, release: Release) -> Retirement:
        """Make ``release`` serve as :meth:`desired` says; what else runs is left to retire
        (:meth:`Converger.serve`)."""
        return await self.converger.serve(release, await self.desired(release))

    # ---- the contract ----------------------------------------------------------------------------

    def _lock(self, app: str) -> AppLock:
        return self.locks(app)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def promote(self, release: Release) -> App:
        app = await self.apps.get(release.app)
        if app.status == "updating":
            raise Conflict(f"app {release.app} is already updating")
        if app.status == "deleting":
            raise Conflict(f"app {release.app} is being deleted")
        self.operations.refuse_if_busy(release.app)  # a reconciliation holding the lock is waited for instead
        token = self.operations.begin(release.app, "updating")
        try:
            await self.desired(release)  # a manifest or environment problem is a 400 now, before anything changes
            await self.apps.set_status(release.app, "updating")
            await self.apps.rollouts.record(release.app, release.id, "updating")
        except BaseException:
            self.operations.end(release.app, token)
            raise
        task: asyncio.Task[None] = asyncio.create_task(self._rollout(release, token))
        self.tasks.add(task)
        self.rolling[release.app] = task

        def done(finished: asyncio.Task[None]) -> None:
            self.tasks.discard(finished)
            self.operations.end(release.app, token)
            if self.rolling.get(release.app) is finished:
                del self.rolling[release.app]

        task.add_done_callback(done)
        return await self.apps.get(release.app)

    async def _ended(self, release: Release, outcome: str, message: str) -> None:
        """A roll-out that did not finish: the previous release (if any) goes on serving, so the app is
        ``running`` (``failed`` when nothing serves); the roll-out is remembered with its reason."""
        serving = (await self.apps.get(release.app)).release
        await self.apps.set_status(release.app, "running" if serving else "failed")
        await self.apps.rollouts.record(release.app, release.id, outcome, message)

    async def _roll_back(self, release: Release) -> None:
        """A roll-out cut short: the release that was serving gets its full count back (a roll-out in steps
        may have stopped some of its processes already), in the steps its deployment allows. Should that
        fail, the reconciliation brings the count back later."""
        serving = (await self.apps.get(release.app)).release
        if serving and serving != release.id:
            try:
                await self.converge(await self.releases.get(release.app, serving))
            except Exception as exc:
                log.error("release.rollback", app=release.app, release=serving, message=str(exc))
            finally:
                self.switching.discard(release.app)

    async def _rollout(self, release: Release, token: object) -> None:
        entered = False
        try:
            async with self._lock(release.app):
                entered = True
                await self._roll(release, token)
        except asyncio.CancelledError:
            if not entered and not self.closing:  # cancelled while it waited for the app (the retirement of the
                # roll-out before it, a scale): nothing of it ran, it is over
                await asyncio.shield(self._ended(release, "cancelled", "cancelled"))
                await asyncio.shield(self.events.emit(release.app, "release roll-out cancelled", release=release.id))
            raise

    async def _roll(self, release: Release, token: object) -> None:
        """The roll-out, under the app's lock: serve the release, say so, then retire what it replaced."""
        # a failure is logged by measure, and the app's status tells the user
        with contextlib.suppress(Exception), log.measure("release.promote", app=release.app, release=release.id):
            if (await self.apps.get(release.app)).status == "deleting":  # while it waited for the app
                await self.apps.rollouts.record(release.app, release.id, "cancelled", "the app is being deleted")
                return
            try:
                retirement = await self.serve(release)
            except asyncio.CancelledError:
                if self.closing:  # left `updating`: the next start's adoption records it as interrupted
                    raise
                with contextlib.suppress(asyncio.CancelledError):  # a second cancel ends the way back only
                    await self._roll_back(release)
                await asyncio.shield(self._ended(release, "cancelled", "cancelled"))
                await self.events.emit(release.app, "release roll-out cancelled", release=release.id)
                return
            except Exception as exc:
                reason = getattr(exc, "message", None) or type(exc).__name__
                await self._roll_back(release)
                await self._ended(release, "failed", str(reason))
                await self.events.emit(release.app, f"release failed to roll out: {reason}", release=release.id)
                raise
            finally:
                self.switching.discard(release.app)
            # the release serves: the roll-out has ended for whoever waits on it, and there is nothing left to
            # cancel (as a Kubernetes roll-out ends with its old pods terminating; its handle goes in the turn
            # its switching mark goes, so no cancel lands in between); the old processes stop then, under the
            # app's lock still, so that what is asked next (a promote, a scale) waits until they are gone, and
            # they stop even if saying so fails
            self.operations.end(release.app, token)
            if self.rolling.get(release.app) is asyncio.current_task():
                del self.rolling[release.app]
            try:
                await self.apps.set_status(release.app, "running", release=release.id)
                await self.apps.rollouts.record(release.app, release.id, "running")
                await self.events.emit(release.app, "release promoted", release=release.id)
            finally:
                await self.converger.retire(retirement)

    async def cancel(self, app: str) -> App:
        """Stop the roll-out in progress: its new processes go, the release that was serving stays."""
        current = await self.apps.get(app)
        task = self.rolling.get(app)
        if (task is None or task.done()) and current.status == "updating" and self.ask_cancel is not None:
            return await self.ask_cancel(app)  # it rolls out in the workers' owner, another process
        if task is None or task.done():
            raise Conflict(f"app {app} is not updating: there is no roll-out to cancel")
        if app in self.switching:
            raise Conflict(f"the roll-out of app {app} is already switching to its new release")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        log.log("release.cancel", app=app)
        return await self.apps.get(app)

    async def restart(self, app: str, service: str | None = None) -> list[Formation]:
        """A rolling restart of the app's processes (of one type): new ones start and pass their health
        checks before the balancers switch and the old ones stop, so nothing is refused meanwhile."""
        current = await self.apps.get(app)
        if not current.release:
            raise BadRequest(f"app {app} has no release yet: deploy it first")
        release = await self.releases.get(app, current.release)
        if service is not None:
            services = manifest_of(release).services
            if service not in services:
                raise NotFound(f"no such process type: {service} (types: {', '.join(sorted(services)) or 'none'})")
        if current.status == "updating" or self.operations.current(app) == "updating":
            raise Conflict(f"app {app} is updating: restart it when the roll-out is done")
        self.operations.refuse_if_busy(app)
        with self.operations.during(app, "restarting"):
            await self._restart(app, service, release)
        return await self.get(app)

    async def _restart(self, app: str, service: str | None, release: Release) -> None:
        async with self._lock(app):
            with log.measure("formation.restart", app=app, service=service or ""):
                try:
                    await self.converge(release, only=service, fresh=True)
                finally:
                    self.switching.discard(app)
            await self.events.emit(app, f"{service or 'every process type'} restarted", release=release.id)

    async def get(self, app: str) -> list[Formation]:
        current = await self.apps.get(app)
        if not current.release:
            return []
        release = await self.releases.get(app, current.release)
        running = [c for c in await self.converger.containers(app) if c.get("State") == "running"]
        formation = []
        listening = await self.listeners.listening(app)
        for want in await self.desired(release):
            count = sum(
                1
                for c in running
                if (c.get("Labels") or {}).get(LABEL_TYPE) == want.service
                and (c.get("Labels") or {}).get(LABEL_RELEASE) == release.id
            )
            ports, main, endpoints = self.listeners.ports(want, listening.get(want.service, {}))
            formation.append(
                Formation(
                    name=want.service,
                    count=want.count,
                    running=count,
                    memory=want.memory,
                    ports=ports,
                    balancer=main,
                    endpoints=endpoints,
                    certificate=await self.certificates.fingerprint(app) if want.tls_ports else "",
                )
            )
        return formation

    async def scale(self, app: str, service: str, update: FormationUpdate) -> Formation:
        current = await self.apps.get(app)
        if not current.release:
            raise BadRequest(f"app {app} has no release yet: deploy it first")
        release = await self.releases.get(app, current.release)
        services = manifest_of(release).services
        if service not in services:
            raise NotFound(f"no such process type: {service} (types: {', '.join(sorted(services)) or 'none'})")
        if update.count is None and update.memory is None:
            raise BadRequest("nothing to change: give a count or a memory")
        with self.operations.during(app, "scaling"):
            return await self._scale(app, service, update, release)

    async def _scale(self, app: str, service: str, update: FormationUpdate, release: Release) -> Formation:
        async with self._lock(app):
            # tried first, saved once it runs: a change the Engine refuses leaves the formation as it was
            with log.measure("formation.scale", app=app, service=service, count=update.count, memory=update.memory):
                try:
                    await self.converge(release, only=service, patch={service: update})
                finally:
                    self.switching.discard(app)
            await self.state.execute(
                "INSERT INTO formation (app, service, count, memory) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (app, service) DO UPDATE SET count = COALESCE(excluded.count, count), "
                "memory = COALESCE(excluded.memory, memory)",
                (app, service, update.count, update.memory),
            )
            changes = (("count", update.count), ("memory", update.memory))
            scaled = ", ".join(f"{key} {value}" for key, value in changes if value is not None)
            await self.events.emit(app, f"{service} scaled: {scaled}", release=release.id)
        return next(f for f in await self.get(app) if f.name == service)

    async def adopt(self) -> None:
        """After a (re)start: keep the running containers, serve the balancers, finish what was cut short
        (a deletion, a roll-out); :meth:`loops` then keep every count. An app whose records are damaged is
        skipped: it is logged, reported in its own log and marked failed; the others are adopted."""
        for app in await self.apps.list():
            if app.status == "deleting":
                self._spawn(self._finish_delete(app.name))
                continue
            if not app.release:
                if app.status == "updating":
                    await self.apps.set_status(app.name, "failed")
                    for name, rolled in await self.apps.rollouts.interrupted():
                        if name == app.name:
                            await self.apps.rollouts.record(name, rolled, "failed", INTERRUPTED)
                continue
            try:
                release = await self.releases.get(app.name, app.release)
                await self.desired(release)
            except (RackError, ValueError) as exc:  # a missing release, an unreadable manifest
                await self._damaged(app.name, exc)
                continue
            interrupted = app.status == "updating"
            self._spawn(self._adopt(release, interrupted))

    def loops(self) -> list[Loop]:
        """Keeping the counts and the balancers, run by :meth:`LocalProvider.workers` after :meth:`adopt`."""
        return [
            Loop("formation.adopt", start=self.adopt),
            Loop("formation.refresh", self._refresh),
            Loop("formation.watch", self._watch),
            Loop("formation.reconcile", self._poll),
        ]

    async def _damaged(self, app: str, exc: Exception) -> None:
        reason = exc.message if isinstance(exc, RackError) else f"its release is unreadable ({type(exc).__name__})"
        self.damaged.add(app)
        log.error("formation.adopt", app=app, damaged="true", message=reason)
        await self.events.emit(app, f"app skipped at start: {reason}")
        with contextlib.suppress(RackError):
            await self.apps.set_status(app, "failed")

    async def _finish_delete(self, app: str) -> None:
        """A deletion cut short by a restart: do it again (every step of it may be done twice)."""
        with log.measure("app.delete.resume", app=app), contextlib.suppress(Exception):
            await self.apps.delete(app)

    # ---- keeping the counts --------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Reconcile an app as soon as one of its processes stops or goes (``convox ps stop``, ``docker kill``,
        ``docker rm -f``); the Engine's event stream, taken again after it drops."""
        filters = {"type": ["container"], "event": ["die", "stop", "destroy"], "label": [f"{LABEL_RACK}={self.rack}"]}
        while True:
            try:
                # from now (a `since` also makes the Engine answer at once rather than at its first event)
                async for event in self.docker.events(filters, since=f"{time.time():.9f}"):
                    labels = (event.get("Actor") or {}).get("Attributes") or {}
                    app = labels.get(LABEL_APP, "")
                    if app and labels.get(LABEL_ONEOFF) != "true" and LABEL_TYPE in labels:
                        self._spawn(self._reconcile_soon(app))
            except RackError:
                await asyncio.sleep(RECONCILE_SECONDS)

    async def _poll(self) -> None:
        """Reconcile every app now and then, for what the event stream missed."""
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            with contextlib.suppress(RackError):
                for app in await self.apps.list():
                    await self.reconcile(app.name)

    async def _reconcile_soon(self, app: str) -> None:
        if app in self.pending:
            return
        self.pending.add(app)
        try:
            await asyncio.sleep(RECONCILE_DEBOUNCE)  # several processes stopped at once: one pass
        finally:
            self.pending.discard(app)
        await self.reconcile(app)

    async def reconcile(self, app: str) -> None:
        """Start what is missing from the active release's counts (a process stopped or killed from outside
        is replaced); nothing while a roll-out or a scale runs (it converges itself), the app is being
        deleted or has no release (nor a damaged one). A failure is logged, and tried again at the next pass."""
        lock = self._lock(app)
        if lock.locked():
            return
        async with lock:
            try:
                current = await self.apps.get(app)
                # a failed roll-out leaves the previous release serving: its counts are kept too
                if current.status not in ("running", "failed") or not current.release or app in self.damaged:
                    return
                release = await self.releases.get(app, current.release)
                alive = [c for c in await self.converger.containers(app) if c.get("State") in ALIVE]
                short = []
                for want in await self.desired(release):
                    have = sum(
                        1
                        for c in alive
                        if (c.get("Labels") or {}).get(LABEL_TYPE) == want.service
                        and (c.get("Labels") or {}).get(LABEL_RELEASE) == release.id
                        and (c.get("Labels") or {}).get(LABEL_MEMORY) == str(want.memory)
                    )
                    if have < want.count:
                        short.append(f"{want.service} {have}/{want.count}")
                if not short:
                    return
                with log.measure("formation.reconcile", app=app, release=release.id, short=",".join(short)):
                    try:
                        await self.converge(release)
                    finally:
                        self.switching.discard(app)
                await self.events.emit(app, f"processes replaced: {', '.join(short)}", release=release.id)
            except (RackError, ValueError) as exc:
                log.error("formation.reconcile", app=app, message=getattr(exc, "message", None) or str(exc))

    async def _adopt(self, release: Release, interrupted: bool) -> None:
        attempt = 0
        while True:
            async with self._lock(release.app):
                try:
                    await self.converge(release)
                except Unavailable as exc:  # the engine is away: adopt again when it is back
                    log.error("formation.adopt", app=release.app, release=release.id, message=exc.message)
                except Exception as exc:
                    log.error("formation.adopt", app=release.app, release=release.id, message=str(exc))
                    break
                else:
                    break
                finally:
                    self.switching.discard(release.app)
            await asyncio.sleep(min(2.0**attempt, 10.0))
            attempt += 1
        if interrupted:  # the previous release still serves: running, the cut-short roll-out remembered
            with contextlib.suppress(RackError):
                await self.apps.set_status(release.app, "running")
                for app, rolled in await self.apps.rollouts.interrupted():
                    if app == release.app:
                        await self.apps.rollouts.record(app, rolled, "failed", INTERRUPTED)

    async def _refresh(self) -> None:
        """Keep each balancer's backends on the running containers of the active release."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            for app, service in list(self.listeners.main):
                if self._lock(app).locked():
                    continue
                with contextlib.suppress(RackError, KeyError):
                    try:
                        current: App | None = await self.apps.get(app)
                    except NotFound:
                        current = None
                    if current is None or current.status == "deleting":  # deleted there (the apps service)
                        self.listeners.unview(app)
                        continue
                    release = await self.releases.get(app, current.release)
                    want = next((w for w in await self.desired(release) if w.service == service), None)
                    running = [
                        c
                        for c in await self.converger.containers(app)
                        if c.get("State") == "running"
                        and (c.get("Labels") or {}).get(LABEL_TYPE) == service
                        and (c.get("Labels") or {}).get(LABEL_RELEASE) == release.id
                    ]
                    if want is not None and want.port and (app, service) in self.listeners.main:
                        await self.listeners.put_main(app, want, await self.listeners.backends(running, want.port))
                        if want.extra_listeners:
                            await self.listeners.put_extra(app, want, running)
                        await self.listeners.record(app, want)

    async def forget(self, app: str) -> None:
        """The app is being deleted: close its balancers and drop its formation, once a roll-out, scale or
        reconciliation in progress is done (it would start processes after the deletion removed them)."""
        async with self._lock(app):
            await self.listeners.forget(app)
            await self.state.execute("DELETE FROM formation WHERE app = ?", (app,))

    async def close(self) -> None:
        self.closing = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.listeners.close()
