"""The provider contract: one interface, resource by resource, implemented by `local` and `aws`.

Services depend on these protocols only; aiodocker and aioboto3 stay inside their providers, which also
translate vendor errors into :mod:`shared.errors`. Method names are resource-then-verb, read through a
sub-API per resource (``provider.apps.create(name)``), the way aiodocker groups its API.

Every resource of the rack has its protocol here. A protocol joins :class:`Provider` once a provider
implementation serves it; until then the protocol fixes its shape so that both providers can fit it
(ids are strings, streams are async iterators, options are pydantic models with optional fields).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Collection
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from shared.manifest import Manifest
from shared.models import (
    App,
    Build,
    BuildOptions,
    BuildReport,
    Formation,
    FormationUpdate,
    ImageStatus,
    Process,
    ProcessRunOptions,
    Release,
    Resource,
    ResourceEnv,
    StoredObject,
    System,
    TimerStatus,
)
from shared.stream import ProcessStream


class AppsAPI(Protocol):
    async def create(self, name: str) -> App: ...
    async def get(self, name: str) -> App: ...
    async def list(self) -> list[App]: ...
    async def delete(self, name: str) -> None: ...


class SystemAPI(Protocol):
    async def get(self) -> System: ...

    async def images(self, images: list[str]) -> list[ImageStatus]:
        """Whether builds can start from each image: the engine has it, or a registry answers for it (each
        probe bounded by a few seconds and remembered for a while). In the order asked."""
        ...


class ProcessesAPI(Protocol):
    """Containers (local) or tasks (aws) of an app; a pid is only found through its own app.

    ``cpu`` and ``memory`` of a listed process are fractions computed as ``docker stats`` computes them, from
    samples kept in the background (a listing never waits on a fresh one-second sample per process).
    """

    async def run(self, app: str, options: ProcessRunOptions, time_limit: float | None = None) -> Process:
        """A one-off process, detached, removed when it ends (or stopped after ``time_limit`` seconds, by
        :meth:`Provider.workers`, whichever service ran it and however often it restarted). Without
        ``options.image`` it runs the process type's image of ``options.release`` (the app's active release
        when empty) with the release's environment, ``options.environment`` on top."""
        ...

    async def run_interactive(
        self, app: str, options: ProcessRunOptions, time_limit: float | None = None
    ) -> ProcessStream:
        """Like :meth:`run`, but attached to a stream: checked now (app, release, process type), started by
        :meth:`ProcessStream.start`; its container is removed when it ends. It lives no longer than the
        process that holds its stream: when that dies (``kill -9`` included), :meth:`Provider.workers` ends it
        (locally once it sees the process's runner lock free, on AWS once the stream's lease runs out)."""
        ...

    async def exec(self, app: str, pid: str, command: list[str]) -> ProcessStream:
        """A new process in the running process ``pid`` of ``app``: an unknown pid, another app's or the rack's
        is :class:`~shared.errors.NotFound` here, before anything starts."""
        ...

    @property
    def metrics_interval(self) -> float:
        """Seconds between two samples of :meth:`metrics`: the provider's own sampling (its engine's)."""
        ...

    def metrics(self, app: str, service: str | None = None, release: str | None = None) -> AsyncIterator[list[Process]]:
        """The app's processes with fresh ``cpu`` and ``memory``, every :attr:`metrics_interval`, until closed."""
        ...

    async def list(
        self, app: str, service: str | None = None, release: str | None = None, stats: bool = True
    ) -> list[Process]: ...
    async def get(self, app: str, pid: str) -> Process: ...
    async def stop(self, app: str, pid: str) -> None: ...


class ResourceHook(Protocol):
    async def __call__(self, app: str, manifest: Manifest) -> ResourceEnv:
        """Make the resources ``manifest`` declares ready and linked (unlink those it dropped): the variables
        the release gets. Raises (a RackError) when one cannot be had: the build fails, no release is made."""
        ...


class BuildsAPI(Protocol):
    def link_resources(self, hook: ResourceHook) -> None:
        """Called where builds run: ``hook`` runs before a complete build's release is made, and what it
        returns goes into that release's environment (``set`` on top, ``unset`` removed). A RackError it raises
        fails the build with its message, and no release is made."""
        ...

    async def create(self, app: str, source: str, manifest: Manifest, options: BuildOptions) -> Build:
        """Record a build of the source stored as the app's object ``source`` (a gzipped tar, see
        :class:`ObjectsAPI`; the caller has checked it and parsed ``manifest`` from it) and start building it
        in the background; the provider owns the object from here on (it may delete it once it has read it).
        NotFound for an unknown app or object. A build that completes makes a release (not promoted); one
        that fails makes none."""
        ...

    async def get(self, app: str, build_id: str) -> Build: ...
    async def list(self, app: str, limit: int = 20) -> list[Build]: ...

    def logs(self, app: str, build_id: str, follow: bool = True) -> AsyncIterator[bytes]:
        """The build's output so far, then (``follow``) what it writes until it ends."""
        ...

    async def running(self) -> int:
        """How many builds of the rack are running now (every app's). A build whose runner died (the
        service that ran it, or the builder task) is marked failed by :meth:`Provider.workers`, not left
        running."""
        ...


@runtime_checkable
class BuildReportsAPI(Protocol):
    """Builds run outside the rack (the aws provider's builder task) report their end through the rack, with
    the per-build token the build's builder was given (never the rack password). A provider whose builds run
    in the rack itself (local) has no such API."""

    async def report(self, app: str, build_id: str, token: str, report: BuildReport) -> Build:
        """Finish a running build with ``report``: its images make the release, its error fails it. Unauthorized
        unless ``token`` is the build's own; NotFound for an unknown app or build (a build is found through its
        own app only); BadRequest when the build is no longer running (a token reports once) or when the
        images do not name exactly the built process types."""
        ...


MAX_OBJECT_SIZE = 5 * 1024**3
"""The largest object :meth:`ObjectsAPI.store` takes unless told less (5 GiB)."""


class ObjectsAPI(Protocol):
    """Objects kept for an app (a build's source), like Convox's ``ObjectStore``/``ObjectFetch``: files under
    the data dir locally, objects of the rack's bucket on aws; an app's go with it.

    A key is ``/``-separated segments of letters, digits, ``.``, ``_`` and ``-``, none starting with a dot,
    at most 255 characters (:func:`shared.names.check_object_key`): BadRequest otherwise, before anything
    else. An unknown app is NotFound."""

    async def store(
        self, app: str, key: str, data: AsyncIterable[bytes], max_size: int = MAX_OBJECT_SIZE
    ) -> StoredObject:
        """Store what ``data`` yields under ``key``, replacing the object there: a reader sees the old object
        whole or the new one whole, never a part. More than ``max_size`` bytes is PayloadTooLarge; then, as
        when ``data`` raises, nothing is stored (an object that was there stays)."""
        ...

    async def fetch(self, app: str, key: str) -> AsyncIterator[bytes]:
        """The object's content: checked now (NotFound for an unknown app or key), then yielded in chunks as
        the returned iterator is consumed."""
        ...

    async def exists(self, app: str, key: str) -> bool: ...

    async def delete(self, app: str, key: str) -> None:
        """Remove the object (NotFound when there is none)."""
        ...


class ReleasesAPI(Protocol):
    async def create(
        self,
        app: str,
        *,
        build: str | None = None,
        env: dict[str, str] | None = None,
        description: str = "",
        set: dict[str, str] | None = None,
        unset: Collection[str] = (),
    ) -> Release:
        """A new release; what is not given is copied from the app's latest release, in one step with the
        environment changed: ``unset`` removed (where there), then ``set`` on top (a manifest's resources)."""
        ...

    async def change_env(
        self,
        app: str,
        *,
        set: dict[str, str] | None = None,
        unset: Collection[str] = (),
        replace: bool = False,
        description: str = "",
    ) -> Release:
        """A new release with the latest one's environment changed: ``set`` on top (of nothing with
        ``replace``), ``unset`` removed (NotFound for one not there). Atomic: two changes made at once, from
        any services, both land."""
        ...

    async def get(self, app: str, release_id: str) -> Release: ...
    async def environment(self, app: str) -> dict[str, str]:
        """The environment of the app's latest release (``{}`` before the first)."""
        ...

    async def promote(self, app: str, release_id: str) -> App:
        """Start rolling the release out; the app is ``updating`` until it is ``running`` or ``failed``.
        Works from any service: the roll-out itself runs under :meth:`Provider.workers`. The refusals are
        :mod:`shared.errors` (NotFound, BadRequest for a release that cannot run, Conflict while updating;
        Unavailable when nothing runs the workers)."""
        ...

    async def settled(self, app: str, within: float) -> App:
        """The app once no roll-out of it is in progress (at most ``within`` seconds on: then as it is).
        Its ``release`` is what serves; a roll-out that did not finish is its ``failed_release`` and
        ``failure`` (why: failed health checks, cancelled, interrupted by a restart). A roll-out has ended
        once its release serves: the old release's processes may still be stopping then (draining their
        connections), as a Kubernetes roll-out ends with its old pods terminating; what is asked of the app
        next waits until they are gone."""
        ...

    async def list(self, app: str, limit: int = 20) -> list[Release]: ...


class FormationAPI(Protocol):
    async def get(self, app: str) -> list[Formation]: ...
    async def scale(self, app: str, service: str, update: FormationUpdate) -> Formation: ...

    async def restart(self, app: str, service: str | None = None) -> list[Formation]:
        """A rolling restart of the app's processes (of one process type): new ones pass their health checks
        before the old ones stop. Conflict while the app is updating."""
        ...

    async def cancel(self, app: str) -> App:
        """Stop the roll-out in progress; the release that was serving goes on serving (Conflict when no
        roll-out is in progress, or when it is already switching). Works from any service: the roll-out runs
        under :meth:`Provider.workers`, and ``scale``, ``restart`` and a deletion of the app never run at
        once with it, nor with the reconciliation, whichever services they are asked from."""
        ...

    async def adopt(self) -> None:
        """Take charge of what runs after a (re)start of the rack: adopt running processes (kept, not
        replaced), serve the balancers, finish what was cut short (a roll-out cut short leaves its app running
        the release that was serving, or failed when none was). A start step of :meth:`Provider.workers`
        (which then keeps the counts)."""
        ...


class TimersAPI(Protocol):
    async def list(self, app: str) -> list[TimerStatus]:
        """The timers of the app's active release, with their last run, its exit code and the next run."""
        ...

    async def adopt(self) -> None:
        """Take the timers' saved state again (last and next runs; a run left going is followed to its end and
        not doubled meanwhile): a start step of :meth:`Provider.workers`, which then runs the timers on their
        schedules."""
        ...


Sink = Callable[[list[bytes]], bool]
"""Where a followed log stream may be handed rendered lines at once (:meth:`LogsAPI.app`; whole lines, one or
more to an item): ``True`` once it took them, ``False`` to have them yielded instead."""


class LogsAPI(Protocol):
    """Every process of an app in one stream, with history; platform events; the rack's own log.

    A stream yields batches of whole lines in time order, each UTF-8 ``TIMESTAMP TYPE:RELEASE/PID LINE\n``
    (Convox's form: RFC 3339 in UTC to the microsecond, ``2015-01-01T00:00:00.000000Z web:RNJYVQUMKKU/68831d3dce63
    listening``; ``/PID`` only for a process's line, the rack's own lines are ``gateway: ...``), rendered once
    by the provider (the fields of ``shared.models.LogEntry``). Its first batch comes at once (possibly
    empty) when the request is valid; an unknown app or pid raises before it. Without ``follow`` it ends with
    the history from ``since``; with it, it goes on with every new line until closed.

    Collecting the lines (where a provider must: the local one reads the Docker Engine's logs into its log
    store; on AWS, ECS ships them) is part of :meth:`Provider.workers`, so the streams are served by the
    service that runs the workers (the logs service): the local store hands new lines to the followers of
    that process, and ``app`` there raises Unavailable while the collector is not running.
    """

    def app(
        self,
        app: str,
        *,
        since: datetime | None = None,
        follow: bool = True,
        service: str = "",
        pid: str = "",
        filter: str = "",
        sink: Sink | None = None,
    ) -> AsyncIterator[list[bytes]]:
        """The app's log: lines of ``service`` (a process type, and the platform's events about it), of one
        process ``pid``, containing ``filter``; ``since`` ``None`` for the whole history.

        ``sink`` (a followed stream's): a provider that has new lines in its own turn (the local store, as it
        writes them to its history) may offer them to it there instead of yielding them, and yields only
        what it declined (it returns ``False``: its output is busy or full); the batches keep their order."""
        ...

    def system(
        self, *, since: datetime | None = None, follow: bool = True, service: str = "", filter: str = ""
    ) -> AsyncIterator[list[bytes]]:
        """The rack's own log: its services' lines (``gateway: ...``, of no release or process), ``service``
        naming one (``gateway``). It has no errors of its own: a log with nothing (yet) is an empty history."""
        ...

    async def event(self, app: str, message: str, *, release: str = "", pid: str = "", service: str = "convox") -> None:
        """A platform event in the app's log (``convox:RELEASE/PID message``, or ``SERVICE:...`` with a
        ``service`` that is not ``convox``: a timer's events are ``timer:``); never raises."""
        ...


class ResourcesAPI(Protocol):
    """Backing services (postgres, mysql, mariadb, redis, memcached) and the apps linked to them. A service's
    URL carries its password: ``get`` and ``list`` show it as ``***`` unless ``reveal``. Linking only records
    the link; the caller puts the URL into the app's environment (a release), which is provider-neutral."""

    async def create(self, kind: str, name: str) -> Resource:
        """Start provisioning a service and return it at once, ``creating``; it is ``running`` once it
        accepts connections, or ``failed`` (with its ``message``) holding nothing but its record, which a
        create of the same name replaces (RDS takes minutes: nothing waits for it here). Bad input and a name
        in use (not failed) raise at once. The work goes on in the calling process; should that process die,
        :meth:`Provider.workers` finishes it or undoes it (never both at once with a caller still alive)."""
        ...

    async def get(self, name: str, reveal: bool = False) -> Resource: ...
    async def list(self, reveal: bool = False) -> list[Resource]: ...

    async def delete(self, name: str) -> None:
        """Remove the service and its data; refused (Conflict) while an app is linked to it. A deletion cut
        short (the process died, or the provider failed half-way) is finished by :meth:`Provider.workers`."""
        ...

    async def link(self, name: str, app: str) -> Resource:
        """Record that ``app`` uses the service (NotFound for an unknown service or app)."""
        ...

    async def unlink(self, name: str, app: str) -> Resource: ...

    async def declare(self, app: str, name: str, kind: str) -> Resource:
        """Resource ``name`` of ``app``'s manifest: the service ``<app>-<name>`` (BadRequest when that is no
        valid service name), created when missing (the call returns once it is running; a create that fails
        raises and leaves nothing), kept when there (Conflict when it is of another type), linked to the app.
        Returned with its URL revealed."""
        ...

    async def declared(self, app: str) -> dict[str, str]:
        """The resources of ``app``'s manifest that are linked: manifest name to service name."""
        ...

    async def undeclare(self, app: str, name: str) -> None:
        """The manifest no longer declares ``name``: unlink it from the app; the service and its data stay
        (``delete`` removes them). NotFound when the app has no such resource."""
        ...

    async def address(self, name: str) -> tuple[str, int]:
        """Where the rack reaches the service's server (host, port): what `convox services proxy` relays to.
        NotFound for an unknown service, Conflict when its server is not running."""
        ...

    async def export(self, name: str) -> AsyncGenerator[bytes]:
        """A logical dump of the service's data, made by its own tool where the service runs: postgres
        ``pg_dump``'s plain SQL (each object dropped if it exists before it is made), mysql ``mysqldump``'s
        SQL, redis an RDB file. Checked now (NotFound for an unknown service, BadRequest for a type that keeps
        no data (memcached), Conflict when its server is not running); the returned generator runs the tool and
        yields its output as it comes, at the pace it is consumed (the tool waits while the consumer does);
        closing it early ends the tool. A tool that fails raises :class:`~shared.errors.RackError` at the end of
        the iterator, with its exit code and what it said: a consumer that saw no error has the whole dump."""
        ...

    async def import_(self, name: str, dump: AsyncIterable[bytes]) -> None:
        """Load a dump (what :meth:`export` makes, or the same tool's output elsewhere) into the service:
        postgres in one transaction (all or nothing), mysql statement by statement, redis by replacing the
        whole data set. The service is checked (NotFound, BadRequest, Conflict as for :meth:`export`; Conflict
        too while another import into it runs) before the first chunk of ``dump`` is read. A dump the tool refuses is
        :class:`~shared.errors.BadRequest` with the tool's exit code and error; an exception from ``dump``
        itself (the client went away, a size cap) ends the tool without finishing the import.

        The aws provider makes no dumps yet (they need a task in the rack's network running the tools): there
        both calls are BadRequest, saying what to use instead, once the service is found (NotFound before)."""
        ...


class ParamsAPI(Protocol):
    """The rack's parameters (`convox rack params`): known names, each with a default."""

    async def get(self) -> dict[str, str]: ...

    async def set(self, values: dict[str, str]) -> dict[str, str]:
        """Change some parameters (an empty value restores the default); returns them all."""
        ...


class Provider(Protocol):
    """A provider, opened as an async context manager in a service's lifespan.

    The members are read-only properties, so an implementation may hold its own, narrower sub-API classes
    (``LocalApps`` for :class:`AppsAPI`) as plain attributes and still be checked against this protocol.
    """

    @property
    def name(self) -> str: ...
    @property
    def apps(self) -> AppsAPI: ...
    @property
    def system(self) -> SystemAPI: ...
    @property
    def processes(self) -> ProcessesAPI: ...
    @property
    def builds(self) -> BuildsAPI: ...
    @property
    def objects(self) -> ObjectsAPI: ...
    @property
    def releases(self) -> ReleasesAPI: ...
    @property
    def formation(self) -> FormationAPI: ...
    @property
    def timers(self) -> TimersAPI: ...
    @property
    def logs(self) -> LogsAPI: ...
    @property
    def resources(self) -> ResourcesAPI: ...
    @property
    def params(self) -> ParamsAPI: ...

    async def workers(self, started: Callable[[], None] | None = None) -> None:
        """Run the rack's background work until cancelled: adoption after a restart, reconciliation of
        formation, the roll-outs (those promoted from any service), timers, the failing of builds whose
        runner died (the service that ran them locally, the builder task on AWS), the backing services'
        work left by a process that died (:meth:`ResourcesAPI.create` and ``delete``) along with the servers
        that went missing, the one-offs' (time limits, interactive runs whose stream's process died), and the
        collection of the apps' logs (:class:`LogsAPI`). One service runs it (the
        logs service: the owner, since the local log store hands new lines to the followers in the process
        that collects them), so a restart of that service restarts it all. Every loop runs under one task
        group (:func:`shared.provider.workers.supervise`): a loop that fails is logged and started again with
        back-off, the others going on. ``started`` is called once every start step (adoption) has run."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
