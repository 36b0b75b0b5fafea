"""`ipvsync run`: the only place that knows about time, signals, files and health events.

Rules of residence: triggers in, converges out. Every trigger (file change, reload request,
SIGHUP, rtnetlink event, reconcile timer, health verdict, drain progress) ends in `converge()`,
which observes the kernel, computes desired = config + health + drains, plans and applies. The
pure layers (config, plan, health.effective, drain) hold the logic; this file holds the loop.
"""

from __future__ import annotations

import asyncio
import gc
import glob
import hashlib
import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from ipvsync.apply import Applier, ApplyResult, FaultSeam
from ipvsync.config.build import MAX_CONFIG_BYTES, load_config
from ipvsync.config.load import ConfigInvalid, Document
from ipvsync.config.spec import Config, Service
from ipvsync.desired import Desired, from_config
from ipvsync.drain import apply_drains
from ipvsync.model import DestKey, ServiceKey, Vip
from ipvsync.plan import (
    NO_ORIGIN,
    AddDest,
    AddService,
    BindVip,
    DelDest,
    DelService,
    EditDest,
    EditService,
    Observed,
    Op,
    Owned,
    UnbindVip,
    plan,
)
from ipvsync.state import State, StateStore
from ipvsync.systemd import Notifier

log = logging.getLogger("ipvsync.daemon")

POLL_INTERVAL = 30.0
FULL_RECONCILE_EVERY = 10  # every Nth periodic reconcile reads every service over netlink
SETTLE = 0.05  # seconds to fold an editor's burst of events into one reload
WRITE_WAIT = 2.0  # at most this long for an in-place writer (truncate + write) to close the config file
MAX_BACKOFF = 60.0
DRAIN_POLL = 1.0
DATA_PATH_SYSCTLS = ("net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template",
                     "net.ipv4.vs.conntrack", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")


class ReloadScope(NamedTuple):
    keys: set[ServiceKey] | None  # services to converge; None = all
    leaving: set[ServiceKey] | None  # keys that left the config; None = unknown
    vips_changed: bool  # a VIP declaration changed (or services came or went)
    replaced: list[Service] | None = None  # old declarations not carried over as they were; None = all


@dataclass
class ReloadOutcome:
    code: int  # 0 applied, 1 rejected, 5 rolled back, 6 rollback failed
    message: str
    errors: list[str]
    at: float

    def to_json(self) -> dict[str, Any]:
        result = {0: "applied", 1: "rejected", 5: "rolled back", 6: "rollback failed"}.get(self.code, "error")
        return {"code": self.code, "result": result, "message": self.message, "errors": self.errors,
                "time": self.at}


_SERVICE_FLAGS: tuple[Config, bool, bool] | None = None  # (config, any withdraw_vip, any quorum)


def _service_flags(config: Config) -> tuple[Config, bool, bool]:
    """Per-config facts the converge path asks about often, computed once for the last config."""
    global _SERVICE_FLAGS
    if _SERVICE_FLAGS is None or _SERVICE_FLAGS[0] is not config:
        _SERVICE_FLAGS = (config, any(s.withdraw_vip for s in config.services),
                          any(s.quorum > 0 for s in config.services))
    return _SERVICE_FLAGS


def withdraws(config: Config) -> bool:
    """Whether any service may withdraw its VIP (quorum)."""
    return _service_flags(config)[1]


def uses_quorum(config: Config) -> bool:
    """Whether any service has a quorum (so quorum_step may move weights, sorry servers or VIPs)."""
    return _service_flags(config)[2]


def touched_idents(result: ApplyResult) -> set[bytes]:
    """procfs identities of the services a converge wrote (a service op's key, a dest op's service)."""
    from ipvsync.kernel.procfs import ident_of

    out: set[bytes] = set()
    for op in result.applied:
        key = getattr(op, "service", None) or getattr(op, "key", None)
        if isinstance(key, ServiceKey):
            out.add(ident_of(key))
    return out


def settle_heap() -> None:
    """Collect the cycles a reload left, then move every survivor out of the cyclic GC's sight.

    The config, its parse and the model are ~10^6 long-lived objects for 10,000 real servers; a
    full collection walks all of them (~0.1 s on hardware, several times that under UML) and
    would land in the middle of a later reload. Frozen objects are still freed by refcount."""
    gc.collect()
    gc.freeze()


def rs_id_key(name: str, dest: DestKey) -> str:
    return f"{name}|{dest}"


def _op_fields(op: Op, names: dict[ServiceKey, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {"OPERATION": op.kind}
    skey = getattr(op, "service", None) or (op.key if isinstance(op, (AddService, EditService, DelService))
                                             else None)
    if isinstance(skey, ServiceKey):
        if skey in names:
            fields["SERVICE"] = names[skey]
        if skey.address:
            fields["VIP"] = skey.address
    if isinstance(op, (AddDest, EditDest, DelDest)):
        fields["REAL_SERVER"] = str(op.key)
    if isinstance(op, (BindVip, UnbindVip)):
        fields["VIP"] = op.vip.address
    if op.origin.file:
        fields["CONFIG_FILE"] = op.origin.file
        fields["CONFIG_LINE"] = op.origin.line
    return fields


class Daemon:
    """State of the running daemon; `main()` wires it to the event loop."""

    def __init__(self, config_path: str, state_dir: str, runtime_dir: str, remove_on_exit: bool = False) -> None:
        self.config_path = os.path.abspath(config_path)
        self.runtime_dir = runtime_dir
        self.store = StateStore(state_dir)
        self.remove_on_exit = remove_on_exit
        self.notifier = Notifier()
        self.config: Config | None = None
        self.state = State()
        self.kernel: Any = None
        self.applier: Applier | None = None
        self.health: Any = None
        self.quorum: Any = None
        self.cache: dict[str, tuple[str, Document]] = {}
        self.raw_digest = ""
        self.last_reload: ReloadOutcome | None = None
        self.last_apply: ApplyResult | None = None
        self.converge_lock = asyncio.Lock()
        self.reload_lock = asyncio.Lock()
        self.wakeup = asyncio.Event()
        self.pending: set[str] = set()
        self.writing: set[str] = set()  # config files modified in place and not closed yet
        self.close_events = True  # the file watch reports IN_CLOSE_WRITE (watchdog >= 2.1: FileClosedEvent)
        self.vanished: set[str] = set()  # config files an event saw moved or deleted since the last reload
        self.stopping = False
        self.failures = 0
        self.next_allowed = 0.0
        self.drain_timeouts: dict[ServiceKey, float] = {}
        self.observer: Any = None
        self.rtnl_events: Any = None
        self.metrics: Any = None
        self.counters = {"reloads_applied": 0, "reloads_rejected": 0, "reloads_rolled_back": 0,
                         "drift_repairs": 0, "applies": 0}
        self.ext_state = "MASTER"

    # ---------------------------------------------------------------------------------------- config

    def _source_files(self) -> list[str]:
        files = [self.config_path]
        base = os.path.dirname(self.config_path)
        for pat in self._include_patterns:  # from the last parse of the main file
            files += sorted(glob.glob(os.path.join(base, pat)))
        return files

    _include_patterns: tuple[str, ...] = ()

    def compute_raw_digest(self, trust_stat: bool = False) -> str:
        """Hash of every source file's content. With `trust_stat` (an inotify-driven check), a file
        whose inode, size, mtime and ctime are those of its last read is not read again: a change
        to one file of a 100-file conf.d costs one read, not 100. The periodic poll, SIGHUP and
        `ipvsync reload` read everything. Files taken on trust are remembered for read_config."""
        h = hashlib.sha256()
        self._unread = set()
        seen: dict[str, tuple[tuple[int, int, int, int], bytes]] = {}
        for f in self._source_files():
            try:
                st = os.stat(f)
                key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                known = self._read_stats.get(f)
                if trust_stat and known is not None and known[0] == key:
                    digest = known[1]
                    self._unread.add(f)
                elif not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CONFIG_BYTES:
                    # a FIFO would block this read forever; the loader rejects it (and huge files)
                    digest = b"not read: %o %d" % (st.st_mode, st.st_size)
                else:
                    with open(f, "rb") as fh:
                        digest = hashlib.sha256(fh.read()).digest()
                seen[f] = (key, digest)
                h.update(f.encode() + b"\0" + digest)
            except OSError as exc:
                h.update(f.encode() + b"\0" + str(exc.errno).encode())
        self._file_stats = seen
        return h.hexdigest()

    _file_stats: dict[str, tuple[tuple[int, int, int, int], bytes]] = {}  # as the last digest saw them
    _read_stats: dict[str, tuple[tuple[int, int, int, int], bytes]] = {}  # as when last loaded successfully
    _read_inodes: dict[str, int] = {}  # inode of each source when the config was last read

    def _written_in_place_now(self) -> bool:
        """A source that is the same inode as when last read and changed within SETTLE: a writer
        may be between truncate and close (`cat >`, cp). A save by rename (a new inode, complete
        before its rename) never waits."""
        now = time.time_ns()
        return any(key[0] == self._read_inodes.get(f) and now - key[3] < SETTLE * 1e9
                   for f, (key, _d) in self._file_stats.items())

    def _mid_write(self) -> bool:
        """Whether the sources the last digest saw may be half written, so that a check a file event
        (or the poll) woke must look again before judging them:
        - a source modified and not closed yet (inotify IN_CLOSE_WRITE, when watchdog reports it);
        - a source written in place within SETTLE (a burst of writes still going on);
        - an empty source changed within WRITE_WAIT: a writer that truncated it (open O_TRUNC: cp,
          `>`) may be paused before its write, far longer than SETTLE on a loaded machine. One that
          stays empty is judged (and refused) once quiet for WRITE_WAIT.
        Never asked for `ipvsync reload` or SIGHUP, which judge the file as it is, at once."""
        if (self.writing and self.close_events) or self._written_in_place_now():
            return True
        now = time.time_ns()
        return any(key[1] == 0 and now - key[3] < WRITE_WAIT * 1e9 for key, _d in self._file_stats.values())

    _unread: set[str] = set()  # sources the last digest took on trust (stat unchanged)

    def read_config(self, trust_stat: bool = False) -> Config:
        """Load the config; with `trust_stat`, files the digest just took on trust are not re-read."""
        try:
            return load_config(self.config_path, self.cache, unchanged=self._unread if trust_stat else ())
        finally:
            # include patterns for the raw digest (cheap change detection), from the parse just made
            cached = self.cache.get(self.config_path)
            data = cached[1].data if cached else None
            inc = data.get("include") if isinstance(data, dict) else None
            patterns = tuple(p for p in inc if isinstance(p, str)) if isinstance(inc, list) else ()
            if trust_stat and patterns == self._include_patterns and self._file_stats:
                live = set(self._file_stats)  # the digest just listed these very sources
            else:
                self._include_patterns = patterns
                live = set(self._source_files())
            self._known_sources = live
            for stale in [k for k in self.cache if k not in live]:
                del self.cache[stale]

    # ---------------------------------------------------------------------------------------- kernel

    def observe(self, config: Config, only: set[ServiceKey] | None = None, vips: bool = True) -> Observed:
        """The kernel as the planner needs it for `config` (only those services, when given;
        without the VIP interface's addresses when `vips` is False)."""
        return self.kernel.observe(config.vip_interface, daemons=bool(config.sync_daemons) or bool(
            self.state.owned.daemons), timeouts=config.ipvs_timeouts is not None, only=only, addresses=vips)

    def vips_matter(self, config: Config, scope: set[ServiceKey] | None, declared_vips_changed: bool) -> bool:
        """Whether a converge of `scope` must read and plan VIP addresses. A weight edit or a health
        verdict of a few services leaves every VIP as it is (kernel events and the reconcile repair
        VIP drift); a VIP declaration change, drains (they hold VIPs), withdraw_vip or a link event
        need them."""
        return scope is None or not scope or declared_vips_changed or bool(self.state.drains) or withdraws(config)

    def desired_for(self, config: Config, observed: Observed, now_mono: float, commit: bool = True,
                    scope: set[ServiceKey] | None = None) -> tuple[Desired, Desired]:
        """(effective desired, declared desired) for a config against the observed kernel.

        With commit=False (status, plan previews) quorum and drain records are computed, not kept.
        With a `scope`, health and quorum are evaluated for those services only (a one-service edit
        must not walk 10,000 real servers), unless a VIP may be withdrawn: that needs every service."""
        declared = from_config(config)
        desired = declared
        if self.health is not None:
            from ipvsync.health.effective import QuorumState, evaluate

            prev = self.quorum or QuorumState()
            view, part = config, declared
            if scope is not None and not withdraws(config):
                by_key = config.by_key()
                view = replace(config, services=tuple(by_key[k] for k in scope if k in by_key))
                part = replace(declared, services={k: declared.services[k] for k in scope if k in declared.services})
            op_drains = {(svc.name, rs.key) for svc in view.services for rs in svc.real_servers
                         if rs_id_key(svc.name, rs.key) in self.state.operator_drains
                         } if self.state.operator_drains else set()
            verdicts = self.health.verdicts()  # frozen by the monitor while paused (ha_suspend)
            file_weights = self.health.file_weights()
            if view is config and not op_drains and not file_weights and not uses_quorum(config) and all(
                    h.is_up and h.ramp_from is None for _k, h in verdicts.items()):
                # every real server up, none ramping, nothing drained or switched by file, no quorum:
                # evaluate() would hand back the declared state (the reconcile's common case, 10k
                # dest_weight calls saved)
                desired, quorum = part, QuorumState()
            else:
                desired, quorum = evaluate(part, view, verdicts, op_drains, file_weights, now_mono, prev,
                                           self.health.first_round_done)
            if view is not config:
                names = {s.name for s in view.services}
                quorum = QuorumState(frozenset(n for n in prev.below if n not in names) | quorum.below)
            if commit:
                self.quorum = quorum
        desired, drains, events = apply_drains(
            desired, declared, observed, self.state.owned, self.state.drains, time.time(),
            self.drain_timeouts)
        if commit:
            self.state.drains = drains
            for ev in events:
                log.info(ev)
        return desired, declared

    def _log_ops(self, result: ApplyResult, names: dict[ServiceKey, str], drift: bool) -> None:
        for op in result.applied:
            fields = _op_fields(op, names)
            if drift:
                self.counters["drift_repairs"] += 1
                log.warning("drift repaired: %s", op.text(), extra=fields)
            else:
                log.info("%s", op.text(), extra=fields)
        for text in result.adopted:
            log.warning("adopted (made by another writer): %s", text)

    def converge_with(self, config: Config, reason: str, scope: set[ServiceKey] | None = None,
                      observed: Observed | None = None, vips: bool | None = None) -> ApplyResult:
        """Observe, plan, apply for `config`; logs each change. Raises OSError on kernel errors.

        `scope` narrows the work to those services (a health verdict or a one-service edit must
        not re-read 10,000 real servers); None means everything. Drift elsewhere is the periodic
        reconcile's job. `observed`: the kernel just read for this config and scope, if the caller has it.
        vips=False (scoped only): VIP addresses are neither read nor planned; None: see vips_matter."""
        if vips is None:
            vips = self.vips_matter(config, scope, False)
        vips = vips or scope is None
        if observed is None:
            observed = self.observe(config, scope, vips)
        old_drains = self.state.drains
        desired, _declared = self.desired_for(config, observed, time.monotonic(), scope=scope)
        if scope is not None:
            # records of services outside the scope were not visited: keep them, and their VIPs
            visited = {str(x) for x in scope}
            self.state.drains = {**{k: v for k, v in old_drains.items() if k.split("|", 1)[0] not in visited},
                                 **self.state.drains}
            wanted: dict[Vip, Any] = {}
            if vips:
                wanted = dict(desired.vips)
                for rec in self.state.drains.values():
                    for addr in rec.get("vips", []):
                        wanted.setdefault(Vip(addr, desired.vip_interface), NO_ORIGIN)
            desired = replace(desired, services={k: v for k, v in desired.services.items() if k in scope},
                              vips=wanted)
        assert self.applier is not None
        p = plan(desired, observed, self.state.owned, sync_daemons=config.sync_daemons,
                 timeouts=config.ipvs_timeouts)
        if not p:
            return ApplyResult(p)  # keep last_apply: the last apply that changed something (metrics)
        # owned services outside the scope are safe: the planner only deletes what it observed
        result = self.applier.converge(
            desired, observed, self.state, sync_daemons=config.sync_daemons, timeouts=config.ipvs_timeouts,
            first_plan=p, reobserve=lambda: self.observe(config, scope, vips))
        self.counters["applies"] += 1
        self.last_apply = result
        self._forget(result)
        names = {**p.names}
        drift = reason in ("reconcile", "kernel event")
        self._log_ops(result, names, drift)
        if not result.ok:
            fields = _op_fields(result.failed, names) if result.failed else {}
            fields["ERRNO"] = result.errno
            level = logging.ERROR if result.rollback_failures else logging.WARNING
            log.log(level, "%s", result.summary().replace("\n", "; "), extra=fields)
        self._save_state()
        return result

    def _save_state(self) -> None:
        if self.health is not None:
            self.state.health = self.health.snapshot()
        try:
            self.store.save(self.state)
        except OSError as exc:
            log.error("cannot write the state file %s: %s", self.store.path, exc)

    def reload_scope(self, old: Config | None, new: Config) -> ReloadScope:
        """The services a reload must re-read and converge: those whose declaration changed, were
        added or removed (None: everything, at start or when a global setting changed); the keys
        that left the config; whether any VIP declaration changed.

        O(changed): the loader hands back the identical Service object for an unchanged
        declaration, so only the services that are not the same objects are compared."""
        if old is None or (old.vip_interface, old.vip_mode, old.sync_daemons, old.ipvs_timeouts, old.sysctls) != (
                new.vip_interface, new.vip_mode, new.sync_daemons, new.ipvs_timeouts, new.sysctls):
            return ReloadScope(None, None, True)
        old_ids = {id(s) for s in old.services}
        new_ids = {id(s) for s in new.services}
        replaced = [s for s in old.services if id(s) not in new_ids]
        gone = {s.key: s for s in replaced}
        scope: set[ServiceKey] = set()
        vips = False
        for s in new.services:
            if id(s) in old_ids:
                continue
            before = gone.pop(s.key, None)
            if before is None or before != s:
                scope.add(s.key)
                vips = vips or before is None or before.vips != s.vips
        scope |= gone.keys()  # what is left of `gone` left the config
        return ReloadScope(scope, set(gone), vips or bool(gone), replaced)

    def deletion_guard(self, new: Config, live_keys: Callable[[], set[ServiceKey]],
                       leaving: set[ServiceKey] | None = None) -> str | None:
        """Refuse a reload that deletes every owned service (or more than max_delete).

        `live_keys` reads the kernel's services; only called when an owned service leaves.
        `leaving`: the keys that left the config, when the caller knows them (None: work it out)."""
        if leaving is not None and not any(k in self.state.owned.services for k in leaving):
            return None  # nothing owned leaves: no need to read the kernel
        keys = new.by_key()
        if all(k in keys for k in self.state.owned.services):
            return None
        live = live_keys()
        owned_live = [k for k in self.state.owned.services if k in live]
        if not owned_live:
            return None
        leaving = [k for k in owned_live if k not in keys]
        if len(leaving) == len(owned_live) and not new.allow_empty:
            return (f"refusing to remove all {len(owned_live)} services ipvsync manages (empty or truncated "
                    f"config?); set 'allow_empty: true' in {new.file} to allow it")
        md = new.max_delete
        if md is not None and leaving:
            limit = int(md) if isinstance(md, int) else len(owned_live) * int(str(md).rstrip("%")) // 100
            if len(leaving) > limit:
                return f"refusing to remove {len(leaving)} services: max_delete is {md}"
        return None

    # ---------------------------------------------------------------------------------------- reload

    async def reload(self, why: str, digest: str | None = None, trust_stat: bool = False) -> ReloadOutcome:
        """Load the config; apply it or keep the last good one. Synchronous for `ipvsync reload`.

        `digest`: the sources' raw digest when the caller has just computed it."""
        async with self.reload_lock:
            return self._reload_locked(why, digest, trust_stat)

    def _reload_locked(self, why: str, digest: str | None, trust_stat: bool) -> ReloadOutcome:
        """reload() with reload_lock held (no await: nothing else runs between the digest and the read)."""
        self.notifier.reloading()
        outcome = self._reload(why, digest, trust_stat)
        if outcome.code == 0:
            settle_heap()
        self.last_reload = outcome
        key = {0: "reloads_applied", 1: "reloads_rejected"}.get(outcome.code, "reloads_rolled_back")
        self.counters[key] += 1
        self.notifier.ready(self.status_line())
        return outcome

    async def reload_if_changed(self, trust: bool) -> None:
        """The check a file event or the poll asks for: reload when the sources' digest changed.

        A save by rename is read at once; one in place only once its writer is done (_mid_write),
        waiting at most WRITE_WAIT: its events may still be on the way. The digest and the read are
        made under reload_lock with no await between them: a check that waited for the lock (an
        `ipvsync reload` or SIGHUP was running) looks at the files again instead of reading, long
        after its digest, a file being written meanwhile. The waits are made without the lock: an
        explicit reload answers at once."""
        deadline = time.monotonic() + WRITE_WAIT
        while True:
            async with self.reload_lock:
                digest = self.compute_raw_digest(trust_stat=trust)
                if digest == self.raw_digest:  # nothing changed, or an in-place rewrite with the same bytes
                    return
                if not self._mid_write() or time.monotonic() >= deadline:
                    self._reload_locked("file changed", digest, trust)
                    return
            await asyncio.sleep(SETTLE)

    def _reload(self, why: str, digest: str | None = None, trust_stat: bool = False) -> ReloadOutcome:
        now = time.time()
        self.raw_digest = digest or self.compute_raw_digest()
        self._read_inodes = {f: key[0] for f, (key, _d) in self._file_stats.items()}
        self.vanished.clear()
        stats = self._file_stats  # from the digest just computed: what this read will see
        try:
            new = self.read_config(trust_stat and digest is not None)
            self._read_stats = stats
        except ConfigInvalid as exc:
            errors = [str(e) for e in exc.errors]
            for e in exc.errors:
                log.error("config rejected: %s", e, extra={"CONFIG_FILE": e.file, "CONFIG_LINE": e.line})
            log.error("config rejected (%d errors); keeping the last good config", len(errors))
            return ReloadOutcome(1, f"config rejected ({len(errors)} errors); kept the last good config", errors,
                                 now)
        except OSError as exc:
            msg = f"cannot read {exc.filename or self.config_path}: {exc.strerror}"
            log.error("config rejected: %s", msg, extra={"CONFIG_FILE": self.config_path})
            return ReloadOutcome(1, msg, [msg], now)
        old = self.config
        if old is not None and new.digest == old.digest and why != "start":
            return ReloadOutcome(0, "config unchanged", [], now)
        rs = self.reload_scope(old, new)
        scope = rs.keys
        vips = self.vips_matter(new, scope, rs.vips_changed)
        pre_blocks = self.read_blocks() if scope is None else None  # before the full read (see _verify_full)
        observed = self.observe(new, scope, vips)
        guard = self.deletion_guard(new, lambda: {s.key for s in self.kernel.ipvs.services()}
                                    if scope is not None else set(observed.services), rs.leaving)
        if guard:
            log.error("config rejected: %s", guard, extra={"CONFIG_FILE": new.file})
            return ReloadOutcome(1, guard, [f"{new.file}: {guard}"], now)
        self._remember_drain_timeouts(old, rs.replaced)
        if self.health is not None:
            serving = self._serving(new, observed)
            self.health.update(new, serving, self.state.health if old is None else None)
            if old is None:
                self.quorum = self.start_quorum(new, observed)
        result = self.converge_with(new, "reload", scope, observed, vips)
        if not result.ok:
            if old is not None and self.health is not None:
                self.health.update(old, self._serving(old, observed), None)
            code = result.exit_code
            log.error("reload rolled back: %s", result.error, extra={"CONFIG_FILE": new.file})
            return ReloadOutcome(code, f"apply failed and was rolled back: {result.error}", [result.error], now)
        self.config = new
        if scope is None:
            self._verify_full(pre_blocks, result)
        self._apply_sysctls(new)
        n = len(result.applied)
        log.info("config %s (%s): %d kernel operation(s) in %.3f s", "loaded" if old is None else "reloaded", why,
                 n, result.seconds, extra={"CONFIG_FILE": new.file, "RESULT": "applied"})
        return ReloadOutcome(0, f"applied {n} operation(s) in {result.seconds:.3f} s", [], now)

    @staticmethod
    def start_quorum(config: Config, observed: Observed) -> Any:
        """At start, an anycast service (withdraw_vip) whose VIP is not bound yet counts as below
        quorum until its checks say otherwise: announcing a VIP before any real server is known to be
        up (and withdrawing it a second later) would draw traffic to a director that cannot serve it.
        A VIP already bound (a restart) stays bound: its serving real servers start up."""
        from ipvsync.health.effective import QuorumState

        below = {s.name for s in config.services
                 if s.withdraw_vip and s.quorum and s.vips
                 and not any(Vip(a, config.vip_interface) in observed.addresses for a in s.vips)}
        return QuorumState(frozenset(below))

    def _remember_drain_timeouts(self, old: Config | None, replaced: list[Service] | None = None) -> None:
        """Keep the drain timeouts of the old declarations a reload replaces (what leaves drains with them)."""
        if old is not None:
            for s in old.services if replaced is None else replaced:
                self.drain_timeouts[s.key] = s.drain_timeout

    def _serving(self, config: Config, observed: Observed) -> set[tuple[str, DestKey]]:
        out: set[tuple[str, DestKey]] = set()
        by_key = config.by_key()
        for key, have in observed.services.items():  # the observed side: a scoped read holds a few
            svc = by_key.get(key)
            if svc is None:
                continue
            for rs in svc.real_servers:
                d = have.dests.get(rs.key)
                if d is not None and d.attrs.weight > 0:
                    out.add((svc.name, rs.key))
        return out

    def _apply_sysctls(self, config: Config) -> None:
        from ipvsync.kernel.system import read_sysctl, write_sysctl

        for name, value in config.sysctls.items():
            cur = read_sysctl(name)
            if cur is not None and cur != str(value):
                try:
                    write_sysctl(name, value)
                    log.info("sysctl %s: %s -> %s", name, cur, value)
                except OSError as exc:
                    log.error("cannot set sysctl %s=%s: %s", name, value, exc.strerror)

    def report_sysctls(self) -> None:
        from ipvsync.kernel.system import read_sysctl

        for name in DATA_PATH_SYSCTLS:
            cur = read_sysctl(name)
            if cur is None:
                continue
            if self.config and name in self.config.sysctls:
                continue
            if name == "net.ipv4.vs.expire_nodest_conn" and cur == "0":
                log.info("sysctl %s=0: connections to a deleted real server hang until they time out; "
                         "set it in 'sysctls:' to expire them", name)
            if name == "net.ipv4.ip_forward" and cur == "0" and self.config and any(
                    rs.attrs.forward == 0 for s in self.config.services for rs in s.real_servers):
                log.warning("sysctl net.ipv4.ip_forward=0 but NAT services are configured: replies from the real "
                            "servers will not be forwarded; set it in 'sysctls:'")

    # ---------------------------------------------------------------------------------------- status

    def status_line(self) -> str:
        if self.config is None:
            return "no config loaded"
        n_rs = sum(len(s.real_servers) for s in self.config.services)
        serving = n_rs
        if self.health is not None:
            down = [k for k, h in self.health.verdicts().items() if not h.is_up]
            if down:
                declared = {(s.name, rs.key) for s in self.config.services for rs in s.real_servers}
                serving -= sum(1 for k in down if k in declared)
        last = ""
        if self.last_reload is not None:
            last = f"; last reload {time.strftime('%H:%M:%S', time.localtime(self.last_reload.at))} " \
                   f"{self.last_reload.to_json()['result']}"
        fail = "; ROLLBACK FAILED, retrying" if self.state.failure else ""
        return f"{len(self.config.services)} services, {serving}/{n_rs} real servers serving{last}{fail}"

    # ---------------------------------------------------------------------------------------- loop

    def kick(self, reason: str) -> None:
        self.pending.add(reason)
        self.wakeup.set()

    async def tick(self) -> None:
        """Handle pending triggers: reload on file change, converge on everything else."""
        reasons = set(self.pending)
        self.pending.clear()
        if "file" in reasons or "poll" in reasons:
            await self.reload_if_changed(trust="poll" not in reasons)
            reasons -= {"file", "poll"}
        if not reasons or self.config is None:
            return
        now = time.monotonic()
        if now < self.next_allowed and "health" not in reasons:
            self.pending |= reasons  # back off after failures: never loop hot
            return
        async with self.converge_lock:
            self._check_external_state()
            reason = "reconcile" if "reconcile" in reasons else "kernel event" if "kernel" in reasons else \
                sorted(reasons)[0]
            scope = self.health_scope(reasons)
            blocks = None
            if reasons == {"reconcile"}:
                scope, blocks = self.reconcile_scope(self.config)
            try:
                result = self.converge_with(self.config, reason, scope, vips=True if reason == "reconcile" else None)
            except OSError as exc:
                log.error("converge failed: %s", exc)
                result = None
            if reasons == {"reconcile"}:
                self._after_reconcile(scope, blocks, result)
            if result is None or not result.ok:
                self._last_health = {}  # re-derive everything on the next attempt
            if result is None or not result.ok:
                self.failures += 1
                backoff = min(MAX_BACKOFF, 2 ** min(self.failures, 6))
                self.next_allowed = time.monotonic() + backoff
                self.notifier.status(self.status_line() + f"; converge failed, retry in {backoff:g} s")
            else:
                self.failures = 0
                self.next_allowed = 0.0

    _last_health: dict[tuple[str, DestKey], tuple[bool, int | None]] = {}

    # ------------------------------------------------------------------------------------ reconcile
    # The kernel's text table (kernel/procfs.py) tells which services changed since the last
    # verified read; only those are re-read over netlink. Every FULL_RECONCILE_EVERY-th reconcile
    # (and whenever the table is unusable) reads everything, which also covers the settings the
    # table does not show (thresholds, tunnel, scheduler flags, persistence engine).

    _verified: dict[bytes, bytes] | None = None  # service blocks as verified by the last reconcile
    _quick_runs = 0
    _idents: tuple[Config, dict[bytes, list[ServiceKey]]] | None = None

    @staticmethod
    def read_blocks() -> dict[bytes, bytes] | None:
        from ipvsync.kernel.procfs import read_table, service_blocks

        table = read_table()
        return service_blocks(table) if table is not None else None

    def _verify_full(self, pre: dict[bytes, bytes] | None, result: ApplyResult) -> None:
        """After a converge that read every service (start, a global change): the table as read
        before it is verified; the services it changed are taken as the table shows them right
        after (the kernel acked exactly those writes), so a start from an empty table needs no
        second full read. A service whose block moved without our doing stays unverified."""
        if pre is None or not result.ok:
            self._verified = None
            return
        verified = dict(pre)
        if result.applied:
            post = self.read_blocks()
            if post is None:
                self._verified = None
                return
            for ident in touched_idents(result):
                verified.pop(ident, None)
                if ident in post:
                    verified[ident] = post[ident]
        self._verified = verified
        self._quick_runs = 0

    def reconcile_scope(self, config: Config) -> tuple[set[ServiceKey] | None, dict[bytes, bytes] | None]:
        """(services to re-read: None = all, the table's blocks read now)."""
        blocks = self.read_blocks()
        if blocks is None or self._verified is None or self._quick_runs >= FULL_RECONCILE_EVERY - 1:
            return None, blocks
        old = self._verified
        changed = [i for i in blocks.keys() | old.keys() if blocks.get(i) != old.get(i)]
        if not changed:
            return set(), blocks
        declared = self._declared_idents(config)
        scope = {k for i in changed for k in declared.get(i, ())}
        missing = {i for i in changed if i not in declared}
        if missing:  # owned services that left the config (rare): only then look at what we own
            from ipvsync.kernel.procfs import ident_of

            scope |= {k for k in self.state.owned.services if ident_of(k) in missing}
        return scope, blocks

    def _declared_idents(self, config: Config) -> dict[bytes, list[ServiceKey]]:
        """procfs identity -> the config's service keys (an IPv4 and IPv6 fwmark share one)."""
        from ipvsync.kernel.procfs import ident_of

        if self._idents is None or self._idents[0] is not config:
            out: dict[bytes, list[ServiceKey]] = {}
            for s in config.services:
                out.setdefault(ident_of(s.key), []).append(s.key)
            self._idents = (config, out)
        return self._idents[1]

    def _after_reconcile(self, scope: set[ServiceKey] | None, blocks: dict[bytes, bytes] | None,
                         result: ApplyResult | None) -> None:
        """The blocks read before this reconcile are now verified, except for what it changed."""
        if result is None or not result.ok or blocks is None:
            self._verified = None
            return
        self._quick_runs = 0 if scope is None else self._quick_runs + 1
        self._verified = blocks
        self._forget(result)

    def _forget(self, result: ApplyResult) -> None:
        """Services a converge changed are no longer as last verified (the next reconcile reads them)."""
        if self._verified is None:
            return
        for ident in touched_idents(result):
            self._verified.pop(ident, None)

    def health_scope(self, reasons: set[str]) -> set[ServiceKey] | None:
        """Services whose health verdicts changed since the last converge, when health (or slow
        start) is the only reason to converge; None = converge everything."""
        cfg = self.config
        if reasons == {"kernel"}:
            return set()  # a link or address changed: VIPs and the link only, no service re-read
        if cfg is None or self.health is None or not reasons <= {"health", "slow start"}:
            return None
        verdicts = self.health.verdicts()
        fw = self.health.file_weights()
        cur = {k: (h.is_up, fw.get(k)) for k, h in verdicts.items()}
        prev = self._last_health
        self._last_health = cur
        if not prev:
            return None
        names = {k[0] for k in cur.keys() ^ prev.keys()} | {k[0] for k, v in cur.items() if prev.get(k) != v}
        scope: set[ServiceKey] = set()
        for svc in cfg.services:
            if "slow start" in reasons and svc.slow_start > 0:
                scope.add(svc.key)
            if svc.name in names:
                if svc.quorum or svc.withdraw_vip:
                    return None  # quorum may move a VIP: look at everything
                scope.add(svc.key)
        return scope

    def _check_external_state(self) -> bool:
        """Follow the VIP owner's state file; True when it changed."""
        cfg = self.config
        if cfg is None or cfg.vip_mode != "external" or not cfg.external_state_file or self.health is None:
            return False
        try:
            with open(cfg.external_state_file) as fh:
                st = fh.read().strip().upper() or "MASTER"
        except OSError:
            st = "MASTER"
        if st == self.ext_state:
            return False
        log.info("external VIP owner state %s -> %s: health-check side effects %s", self.ext_state, st,
                 "resumed" if st == "MASTER" else "paused")
        self.ext_state = st
        self.health.set_paused(st != "MASTER")
        return True

    async def timers(self) -> None:
        """Reconcile, stat poll, drain progress, slow-start ramps and the systemd watchdog."""
        assert self.config is not None
        last_reconcile = last_poll = time.monotonic()
        wd = self.notifier.watchdog_usec / 2e6 if self.notifier.watchdog_usec else 0.0
        last_wd = 0.0
        while not self.stopping:
            now = time.monotonic()
            cfg = self.config
            if now - last_reconcile >= cfg.reconcile_interval:
                last_reconcile = now
                self.kick("reconcile")
            if now - last_poll >= POLL_INTERVAL:
                last_poll = now
                self.kick("poll")
            if self.state.drains:
                self.kick("drain")
            if self.health is not None:
                dl = self.health.next_deadline()
                if dl is not None and dl <= now:
                    self.kick("slow start")
            if wd and now - last_wd >= wd:
                last_wd = now
                self.notifier.watchdog()
            if cfg.external_state_file and self._check_external_state():
                self.kick("external")
            step = DRAIN_POLL if (self.state.drains or cfg.external_state_file) else min(5.0, cfg.reconcile_interval)
            if wd:
                step = min(step, wd)
            await asyncio.sleep(step)

    async def loop(self) -> None:
        while not self.stopping:
            await self.wakeup.wait()
            self.wakeup.clear()
            if self.stopping:
                break
            if "file" in self.pending:
                # a save by rename is complete when its event arrives: act at once (later events of the
                # same burst fold into a digest check). Never read a file half written in place (cp, >),
                # nor a source an editor has moved away for an instant (vim's backup rename).
                deadline = time.monotonic() + WRITE_WAIT
                while (self.writing or self._source_missing()) and time.monotonic() < deadline:
                    await asyncio.sleep(SETTLE)
                self.writing.clear()
            await self.tick()

    # ---------------------------------------------------------------------------------------- control

    async def handle(self, req: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "reload":
            outcome = await self.reload("ipvsync reload")
            return {"ok": outcome.code == 0, **outcome.to_json()}
        if cmd == "status":
            from ipvsync.status import build_status

            return {"ok": True, "status": build_status(self, req.get("service"))}
        if cmd in ("drain", "undrain"):
            return self.operator_drain(cmd, str(req.get("service", "")), str(req.get("real_server", "")), peer)
        if cmd == "plan":
            assert self.config is not None
            observed = self.observe(self.config)
            desired, _ = self.desired_for(self.config, observed, time.monotonic(), commit=False)
            p = plan(desired, observed, self.state.owned, sync_daemons=self.config.sync_daemons,
                     timeouts=self.config.ipvs_timeouts)
            return {"ok": True, "config_file": self.config_path, "text": p.text(), "operations": p.to_json()}
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid()}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def operator_drain(self, cmd: str, service: str, real_server: str, peer: dict[str, Any]) -> dict[str, Any]:
        from ipvsync.config.build import split_real_server

        cfg = self.config
        svc = cfg.service(service) if cfg else None
        if svc is None:
            names = ", ".join(s.name for s in cfg.services) if cfg else ""
            return {"ok": False, "error": f"no service {service!r} in the config (services: {names})"}
        try:
            addr, port = split_real_server(real_server, svc.key.port)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        rs = svc.real_server(DestKey(addr, port))
        if rs is None:
            return {"ok": False, "error": f"{real_server} is not a real server of {service} "
                                          f"(real servers: {', '.join(str(r.key) for r in svc.real_servers)})"}
        key = rs_id_key(svc.name, rs.key)
        who = f"uid {peer.get('uid', '?')} pid {peer.get('pid', '?')}"
        fields = {"SERVICE": svc.name, "REAL_SERVER": str(rs.key), "WHO": who}
        if cmd == "drain":
            if key in self.state.operator_drains:
                return {"ok": True, "message": f"{rs.key} of {svc.name} was already drained"}
            self.state.operator_drains[key] = {"who": who, "since": time.time()}
            log.info("operator drain: %s of %s goes to weight 0 (%s)", rs.key, svc.name, who, extra=fields)
        else:
            if self.state.operator_drains.pop(key, None) is None:
                return {"ok": True, "message": f"{rs.key} of {svc.name} was not drained"}
            log.info("operator undrain: %s of %s back in rotation (%s)", rs.key, svc.name, who, extra=fields)
        self._save_state()
        if cfg is not None:
            self.converge_with(cfg, cmd, {svc.key})
        verb = "drained (weight 0 until undrain)" if cmd == "drain" else "undrained"
        return {"ok": True, "message": f"{rs.key} of {svc.name} {verb}"}

    # ---------------------------------------------------------------------------------------- watchers

    def start_watching(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            from watchdog import events
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            log.warning("watchdog is not installed: config changes are noticed by the %g s poll only",
                        POLL_INTERVAL)
            return
        # without close events (watchdog < 2.1) a modified file would count as being written until
        # WRITE_WAIT ran out; the stat-based waits (_mid_write) then stand alone
        self.close_events = hasattr(events, "FileClosedEvent")
        daemon = self

        class Handler(FileSystemEventHandler):  # type: ignore[misc]
            def on_any_event(self, event: Any) -> None:
                kind = getattr(event, "event_type", "")
                if kind in ("opened", "closed_no_write"):
                    return
                path = "" if getattr(event, "is_directory", False) else os.fsdecode(event.src_path)
                loop.call_soon_threadsafe(daemon.file_event, kind, path)

        observer = Observer()
        dirs = {os.path.dirname(self.config_path)}
        if self.config is not None:
            dirs |= {d for d in self.config.include_dirs if os.path.isdir(d)}
        for d in sorted(dirs):
            observer.schedule(Handler(), d, recursive=False)
        observer.daemon = True
        observer.start()
        self.observer = observer

    def _source_missing(self) -> bool:
        """The main file, or a source an event saw go away (an editor's backup rename), is absent."""
        return not os.path.exists(self.config_path) or not all(os.path.exists(f) for f in self.vanished)

    _known_sources: set[str] = set()  # absolute paths of the sources of the last load

    def file_event(self, kind: str, path: str) -> None:
        """A watched directory changed; a source file modified in place is read once it is closed,
        one moved or deleted away is waited for (briefly) before the config is read without it."""
        if path:
            path = os.path.abspath(path)
        if path and (path in self._known_sources or path == self.config_path):
            if kind == "modified" or (kind == "created" and os.path.isfile(path) and not os.path.islink(path)):
                if self.close_events:  # else nothing would ever say the writer closed it
                    self.writing.add(path)
            elif kind in ("closed", "deleted", "moved"):
                self.writing.discard(path)
                if kind != "closed":
                    self.vanished.add(path)
        self.kick("file")

    def start_rtnl(self, loop: asyncio.AbstractEventLoop) -> None:
        from ipvsync.kernel.rtnl import subscribe

        try:
            self.rtnl_events = subscribe()
        except OSError as exc:
            log.warning("cannot subscribe to link/address events (%s): VIPs are repaired at reconcile only", exc)
            return
        self.rtnl_events.sock.setblocking(False)

        def readable() -> None:
            if self.rtnl_events.drain_events():
                self.kick("kernel")

        loop.add_reader(self.rtnl_events.fileno(), readable)

    # ---------------------------------------------------------------------------------------- run

    async def run(self) -> int:
        from ipvsync.kernel.system import Kernel
        from ipvsync.state import StateCorrupt

        loop = asyncio.get_running_loop()
        try:
            self.state = self.store.load()
        except StateCorrupt as exc:
            log.error("%s", exc)
            self.state = State()
        self.kernel = Kernel()
        self.applier = Applier(self.kernel, self.store, FaultSeam.from_env())
        try:
            from ipvsync.health.monitor import HealthMonitor

            self.health = HealthMonitor(lambda: self.kick("health"))
        except ImportError:
            self.health = None
        outcome = await self.reload("start")
        if self.config is None:
            for e in outcome.errors:
                log.error("%s", e)
            return 1 if outcome.code == 1 else outcome.code
        self.report_sysctls()
        self.start_metrics()
        server = await __import__("ipvsync.control", fromlist=["serve"]).serve(self.runtime_dir, self.handle)
        self.start_watching(loop)
        self.start_rtnl(loop)
        for sig, why in ((signal.SIGHUP, "hup"), (signal.SIGTERM, "stop"), (signal.SIGINT, "stop")):
            loop.add_signal_handler(sig, self.on_signal, why)
        tasks = [asyncio.create_task(self.loop()), asyncio.create_task(self.timers())]
        if self.health is not None:
            tasks.append(asyncio.create_task(self.health.run()))
        self.notifier.ready(self.status_line())
        log.info("ipvsync running: %s", self.status_line(), extra={"CONFIG_FILE": self.config_path})
        try:
            await self.stopped()
        finally:
            self.notifier.stopping()
            server.close()
            if self.health is not None:
                self.health.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.observer is not None:
                self.observer.stop()
            self.shutdown_kernel()
            self.kernel.close()
        return 0

    _stop_event: asyncio.Event | None = None

    async def stopped(self) -> None:
        self._stop_event = asyncio.Event()
        await self._stop_event.wait()

    def on_signal(self, why: str) -> None:
        if why == "hup":
            asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
            return
        log.info("stopping (signal); IPVS and VIPs stay in place%s",
                 "" if not self.remove_on_exit else " except with --remove-on-exit")
        self.stopping = True
        self.wakeup.set()
        if self._stop_event is not None:
            self._stop_event.set()

    def shutdown_kernel(self) -> None:
        """Stop: leave everything, except withdraw_vip VIPs (nothing checks health any more) and
        --remove-on-exit."""
        cfg = self.config
        if cfg is None:
            return
        try:
            observed = self.observe(cfg)
            desired = from_config(cfg)
            if self.remove_on_exit:
                desired = Desired({}, {}, cfg.vip_interface, cfg.vip_mode != "external")
                owned = Owned(self.state.owned.services, self.state.owned.vips, frozenset(),
                              self.state.owned.daemons)
                self.state.owned = owned
            else:
                withdraw = {a for s in cfg.services if s.withdraw_vip for a in s.vips}
                if not withdraw:
                    return
                desired = Desired(observed_as_desired(observed), {v: o for v, o in desired.vips.items()
                                                                  if v.address not in withdraw},
                                  cfg.vip_interface, desired.manage_vips)
            assert self.applier is not None
            result = self.applier.converge(desired, observed, self.state, sync_daemons=())
            for op in result.applied:
                log.info("on exit: %s", op.text(), extra=_op_fields(op, {}))
        except OSError as exc:
            log.error("on exit: %s", exc)

    def start_metrics(self) -> None:
        cfg = self.config
        if cfg is None or not cfg.metrics_listen:
            return
        try:
            from ipvsync.metrics import start_metrics
        except ImportError:
            log.warning("metrics: prometheus-client is not installed; 'metrics:' ignored")
            return
        try:
            self.metrics = start_metrics(self, cfg.metrics_listen)
        except Exception as exc:  # noqa: BLE001 - a metrics endpoint must not stop the daemon
            log.error("metrics: cannot listen on %s: %s", cfg.metrics_listen, exc)


def observed_as_desired(observed: Observed) -> dict:
    """Keep every IPVS service as it is (used on exit, when only VIPs change)."""
    from ipvsync.desired import DesiredDest, DesiredService
    from ipvsync.plan import NO_ORIGIN

    out = {}
    for k, s in observed.services.items():
        dests = {dk: DesiredDest(dk, d.family, d.attrs, NO_ORIGIN) for dk, d in s.dests.items()}
        out[k] = DesiredService(str(k), k, s.attrs, dests, NO_ORIGIN, ())
    return out


def main(config_path: str, state_dir: str, runtime_dir: str, remove_on_exit: bool = False) -> int:
    """Run the daemon until SIGTERM; returns the process exit code."""
    from ipvsync.state import LockHeld, RuntimeLock
    from ipvsync.systemd import setup_logging

    setup_logging()
    lock = RuntimeLock(runtime_dir)
    try:
        lock.acquire()
    except LockHeld as exc:
        log.error("another ipvsync daemon (pid %s) already runs with runtime dir %s; stop it first or use "
                  "--runtime-dir", exc.pid or "?", runtime_dir)
        return 4
    try:
        daemon = Daemon(config_path, state_dir, runtime_dir, remove_on_exit)
        try:
            return asyncio.run(daemon.run())
        except PermissionError as exc:
            log.error("permission denied: %s (run as root)", exc)
            return 4
        except OSError as exc:
            log.error("kernel error: %s", exc)
            return 4
        except Exception:  # a crash must not look like "invalid config" (exit 1 is not restarted)
            log.critical("ipvsync crashed; IPVS and VIPs stay in place", exc_info=True)
            return 70  # EX_SOFTWARE: Restart=on-failure restarts it
    finally:
        lock.release()
