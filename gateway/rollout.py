"""The promotion controller: one rollout per alias walks a candidate version through the offline
gate → shadow → canary steps → full promotion, on live evidence, and rolls it back when the
evidence turns.

A rollout lives in the store (`store.RolloutRecord`: its policy, stage and decision log), so a
restarted gateway resumes it. Every gateway process runs the controller; each tick it claims
the running rollouts whose lease is free or expired and renews its own (store.claim_rollouts),
so exactly one process advances a rollout at a time. A decision (start, advance, hold,
rollback, promote, abort) goes to the rollout's log and to the alias history (an alias event
`rollout-<action>` whose reason is the decision with its evidence, as JSON); a hold is recorded
when it changes, not at every tick. Rolling back never touches the alias: the candidate only
ever had a shadow (never answered to a client) or a canary (whose failed requests are retried
on the live target), and both are stopped. The version's lineage is checked at start and at
every tick: a version trained on erased data or on data whose consent was withdrawn is refused
(409) and stopped mid-rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from adapters.registry import Registry
from adapters.swap import Swapper
from gateway.canary import Canaries, CanarySpec
from gateway.evaluations import Evaluations, StartEval
from gateway.rollout_evidence import CanaryEvidence, ShadowEvidence
from gateway.rollout_policy import (
    Action,
    Decision,
    Evidence,
    RolloutPolicy,
    RolloutState,
    RolloutView,
    SignalEvidence,
    StartRollout,
)
from gateway.rollout_stages import Verdict, canary_verdict, shadow_signal, shadow_verdict
from gateway.tenancy import Directory
from store import AdapterVersion, AliasEvent, RolloutRecord, Store, Tenant
from store.errors import Conflict, InvalidRequest, LoopgateError, NotFound, Unprocessable

log = logging.getLogger("loopgate.rollout")
NEXT_STAGE = {"offline": "shadow", "shadow": "canary", "canary": "full", "full": "done"}
LIST_LIMIT = 100


class _GateReasons(msgspec.Struct):
    reasons: list[str] = msgspec.field(default_factory=list)


class AliasDecision(msgspec.Struct, omit_defaults=True):
    """An alias event's reason for a rollout decision (JSON)."""

    rollout: str
    stage: str
    detail: str
    evidence: Evidence | None = None


@dataclass
class Run:
    """One rollout being advanced: its record, tenant, policy and (mutable) state."""

    record: RolloutRecord
    tenant: Tenant
    policy: RolloutPolicy
    state: RolloutState

    @property
    def actor(self) -> str:
        return f"rollout:{self.record.id}"


def view(record: RolloutRecord) -> RolloutView:
    state = msgspec.json.decode(record.state, type=RolloutState)
    policy = msgspec.json.decode(record.policy, type=RolloutPolicy)
    steps = policy.canary.steps
    on_canary = state.stage in ("canary", "full") and state.canary_id is not None
    percent = steps[min(state.step, len(steps) - 1)] if on_canary and steps else None
    return RolloutView(
        id=record.id,
        alias=record.alias,
        version=record.version,
        status=record.status,
        stage=state.stage,
        percent=percent if record.status == "running" else None,
        policy=policy,
        eval_id=state.eval_id,
        shadow_id=state.shadow_id,
        canary_id=state.canary_id,
        decisions=state.decisions,
        actor=record.actor,
        created_at=record.created_at,
        updated_at=record.updated_at,
        finished_at=record.finished_at,
        owner=record.owner,
    )


async def lineage_problem(store: Store, version: AdapterVersion) -> tuple[str, str] | None:
    """(code, why) when the version may never be advanced: trained on erased data, or on data
    whose consent was withdrawn since (do-not-train, or an opted-out end user)."""
    if version.trained_on_erased:
        why = f"{version.id} was trained on dataset {version.dataset_id}, which held erased data"
        return "trained_on_erased", why
    if version.dataset_id and (n := await store.consent_withdrawn(version.dataset_id)):
        why = (
            f"{version.id} was trained on dataset {version.dataset_id}, {n} of whose examples "
            "came from data whose consent was withdrawn (do-not-train or an opted-out user)"
        )
        return "consent_withdrawn", why
    return None


class Rollouts:
    """The admin operations on rollouts and the controller that advances them."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        swapper: Swapper,
        canaries: Canaries,
        evaluations: Evaluations,
        directory: Directory,
        canary_evidence: CanaryEvidence,
        *,
        tick_s: float,
        lease_s: float,
        shadows: ShadowEvidence | None = None,
    ):
        self.store = store
        self.registry = registry
        self.swapper = swapper
        self.canaries = canaries
        self.evaluations = evaluations
        self.directory = directory
        self.canary_evidence = canary_evidence
        self.shadows = shadows
        self.tick_s = tick_s
        self.lease_s = lease_s
        self.owner = f"gw:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._advancing: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # one step of a rollout at a time here

    # -- admin ----------------------------------------------------------------------------------

    async def start(self, tenant: Tenant, alias: str, req: StartRollout, actor: str) -> RolloutView:
        version = await self._startable(tenant, alias, req)
        policy = (req.policy or RolloutPolicy()).check()
        eval_id = await self._eval_for(tenant, alias, version, req.eval_id, actor)
        now = time.time()
        rollout_id = "ro_" + secrets.token_hex(8)
        detail = f"started by {actor}: {req.reason or 'no reason given'}"
        state = RolloutState(eval_id=eval_id)
        state.decisions.append(Decision(now, "offline", "start", detail, Evidence(eval_id)))
        record = RolloutRecord(
            id=rollout_id,
            tenant_id=tenant.id,
            alias=alias,
            version=version.id,
            status="running",
            stage="offline",
            policy=msgspec.json.encode(policy).decode(),
            state=msgspec.json.encode(state).decode(),
            actor=actor,
            created_at=now,
            updated_at=now,
        )
        if not await self.store.add_rollout(record):
            raise Conflict(f"alias '{alias}' already has a running rollout", param="alias")
        await self._alias_event(record, state.decisions[-1], actor)
        log.info("rollout %s of %s on %s/%s started", rollout_id, version.id, tenant.name, alias)
        return view(record)

    async def _startable(self, tenant: Tenant, alias: str, req: StartRollout) -> AdapterVersion:
        """The version, when a rollout of it on this alias may start (else 404/409)."""
        found = await self.store.get_alias(tenant.id, alias)
        if found is None:
            raise NotFound(f"no alias '{alias}' for this tenant", param="alias")
        version = await self.registry.get(tenant, req.version)
        if version.status == "retired":
            raise Conflict(f"version {version.id} is retired", param="version")
        if self.swapper.current(found).adapter_version == version.id:
            raise Conflict(f"alias '{alias}' already serves {version.id}", param="version")
        problem = await lineage_problem(self.store, version)
        if problem is not None:
            raise Conflict(
                f"{problem[1]}: it is never rolled out; retrain on the cleaned data "
                f"(POST .../aliases/{alias}/retrain)",
                param="version",
                code=problem[0],
            )
        latest = await self.store.list_rollouts(tenant.id, alias, 1)
        if latest and latest[0].status == "running":
            raise Conflict(f"alias '{alias}' already has a running rollout: {latest[0].id}")
        if any(c.status == "active" for c in await self.store.canaries_of(tenant.id, alias)):
            raise Conflict(f"alias '{alias}' has an active canary; stop or promote it first")
        return version

    async def _eval_for(
        self, tenant: Tenant, alias: str, version: AdapterVersion, given: str | None, actor: str
    ) -> str:
        """The offline gate's eval run: the one named, else the latest of this version against
        what the alias serves now, else a new one (queued for an evals worker)."""
        if given is not None:
            run = await self.store.get_eval_run(tenant.id, given)
            if run is None:
                raise NotFound(f"no eval run '{given}' for this tenant", param="eval_id")
            if run.candidate != version.id or run.alias != alias:
                raise InvalidRequest(
                    f"eval run {given} evaluated {run.candidate} on '{run.alias}', not "
                    f"{version.id} on '{alias}'",
                    param="eval_id",
                )
            return run.id
        found = await self.store.get_alias(tenant.id, alias)
        live = self.swapper.current(found).adapter_version if found else None
        for run in await self.store.list_eval_runs(tenant.id, version.id):
            if run.alias == alias and run.live == live and run.status != "failed":
                return run.id
        return (await self.evaluations.start(tenant, StartEval(alias, version.id), actor)).id

    async def of_alias(self, tenant: Tenant, alias: str) -> list[RolloutView]:
        return [view(r) for r in await self.store.list_rollouts(tenant.id, alias, LIST_LIMIT)]

    async def get(self, tenant: Tenant, alias: str, rollout_id: str) -> RolloutView:
        return view(await self._record(tenant, alias, rollout_id))

    async def _record(self, tenant: Tenant, alias: str, rollout_id: str) -> RolloutRecord:
        record = await self.store.get_rollout(tenant.id, rollout_id)
        if record is None or record.alias != alias:
            raise NotFound(f"no rollout '{rollout_id}' on alias '{alias}'", param="rollout_id")
        return record

    async def abort(
        self, tenant: Tenant, alias: str, rollout_id: str, actor: str, reason: str | None
    ) -> RolloutView:
        """End a running rollout now: its shadow and canary stopped, the alias untouched."""
        for _ in range(5):  # the owner may save between our read and our write: read again
            record = await self._record(tenant, alias, rollout_id)
            if record.status != "running":
                raise Conflict(f"rollout {rollout_id} is {record.status}, not running")
            run = self._run(record, tenant)
            detail = f"aborted by {actor}: {reason or 'no reason given'}"
            decision = Decision(time.time(), run.state.stage, "abort", detail)
            run.state.decisions.append(decision)
            await self._teardown(run, detail)
            state = msgspec.json.encode(run.state).decode()
            if await self.store.end_rollout(
                tenant.id, record.id, "aborted", state, record.updated_at
            ):
                await self._alias_event(record, decision, actor)
                return await self.get(tenant, alias, rollout_id)
        raise Conflict(f"rollout {rollout_id} kept changing; try the abort again")

    # -- the controller -------------------------------------------------------------------------

    async def tick(self) -> list[str]:
        """One pass: claim (or renew) this process's rollouts and advance each one step; the
        ids advanced."""
        records = await self.store.claim_rollouts(self.owner, self.lease_s)
        for record in records:
            await self._advance(record)
        return [r.id for r in records]

    async def run(self) -> None:
        """Claim every `tick_s` (the lease renews even while a slow step, such as a swap, is
        under way) and advance each claimed rollout in a task of its own."""
        try:
            while True:
                await asyncio.sleep(self.tick_s)
                try:
                    for record in await self.store.claim_rollouts(self.owner, self.lease_s):
                        self._spawn(record)
                except Exception:  # the next tick tries again
                    log.exception("rollout tick failed")
        finally:
            for task in list(self._advancing.values()):
                task.cancel()

    def _spawn(self, record: RolloutRecord) -> None:
        if record.id in self._advancing:
            return
        task = asyncio.create_task(self._advance(record), name=f"rollout-{record.id}")
        self._advancing[record.id] = task
        task.add_done_callback(lambda _: self._advancing.pop(record.id, None))

    async def release(self) -> None:
        """Give up this process's leases (at shutdown): another gateway takes over at once."""
        with contextlib.suppress(Exception):
            await self.store.release_rollouts(self.owner)

    def _run(self, record: RolloutRecord, tenant: Tenant) -> Run:
        policy = msgspec.json.decode(record.policy, type=RolloutPolicy)
        return Run(record, tenant, policy, msgspec.json.decode(record.state, type=RolloutState))

    async def _advance(self, claimed: RolloutRecord) -> None:
        async with self._locks.setdefault(claimed.id, asyncio.Lock()):
            record = await self.store.get_rollout(claimed.tenant_id, claimed.id)
            if record is not None and record.status == "running" and record.owner == self.owner:
                await self._step(record)
            else:
                self._locks.pop(claimed.id, None)

    async def _step(self, record: RolloutRecord) -> None:
        tenant = await self.store.get_tenant(record.tenant_id)
        if tenant is None:
            return
        run = self._run(record, tenant)
        try:
            verdict = await self._lineage(run) or await self._stage(run)
        except LoopgateError as exc:  # the engine busy, a store hiccup: held, tried again
            verdict = Verdict("hold", f"{run.state.stage}: {exc.message}", Evidence())
        except Exception as exc:
            log.exception("rollout %s: the %s stage failed", record.id, run.state.stage)
            verdict = Verdict("hold", f"{run.state.stage} failed: {exc!r}", Evidence())
        await self._apply(run, verdict)

    async def _lineage(self, run: Run) -> Verdict | None:
        version = await self.store.get_adapter(run.record.version)
        if version is None:
            return Verdict("rollback", f"version {run.record.version} is gone", Evidence())
        problem = await lineage_problem(self.store, version)
        return None if problem is None else Verdict("rollback", problem[1], Evidence())

    async def _stage(self, run: Run) -> Verdict:
        stages: dict[str, Callable[[Run], Awaitable[Verdict]]] = {
            "offline": self._offline,
            "shadow": self._shadow,
            "canary": self._canary,
            "full": self._full,
        }
        return await stages[run.state.stage](run)

    # -- the stages -----------------------------------------------------------------------------

    async def _offline(self, run: Run) -> Verdict:
        """The promotion gate's verdict on the rollout's eval run."""
        eval_id = run.state.eval_id or ""
        evidence = Evidence(eval_id=eval_id)
        found = await self.store.get_eval_run(run.tenant.id, eval_id)
        if found is None:
            return Verdict("rollback", f"eval run {eval_id} is gone", evidence)
        if found.status in ("queued", "running"):
            return Verdict("hold", f"waiting for eval run {eval_id}", evidence)
        reasons = "; ".join(msgspec.json.decode(found.decision or "{}", type=_GateReasons).reasons)
        if found.status == "done" and found.promote:
            return Verdict("advance", f"the gate passed eval {eval_id}: {reasons}", evidence)
        why = reasons or found.error or found.status
        return Verdict("rollback", f"the gate refused eval {eval_id}: {why}", evidence)

    async def _shadow(self, run: Run) -> Verdict:
        policy, state = run.policy.shadow, run.state
        if not policy.enabled:
            return Verdict("advance", "the policy skips the shadow stage", Evidence())
        if self.shadows is None:
            return Verdict("advance", "skipped: this gateway has no shadow evaluation", Evidence())
        r = run.record
        if state.shadow_id is None:
            try:
                state.shadow_id = await self.shadows.start(
                    run.tenant, r.alias, r.version, policy.share, run.actor
                )
            except InvalidRequest as exc:
                if exc.param != "checks":
                    raise
                # The tenant grades nothing without a reference (its gate policy has no regex,
                # json, length or judge check): live evidence waits for the canary.
                return Verdict("advance", f"the shadow stage is skipped: {exc.message}", Evidence())
            detail = f"shadow {state.shadow_id} started on {policy.share:.0%} of the traffic"
            return Verdict("hold", detail, Evidence(shadow_id=state.shadow_id))
        verdict = shadow_verdict(
            run.policy, await self.shadows.summary(run.tenant, r.alias, r.version)
        )
        verdict.evidence.shadow_id = state.shadow_id
        return verdict

    async def _canary(self, run: Run) -> Verdict:
        steps, state = run.policy.canary.steps, run.state
        if not steps:
            return Verdict("advance", "the policy has no canary steps", Evidence())
        percent = steps[state.step]
        if state.canary_id is None:
            return await self._start_canary(run, percent)
        evidence = Evidence(percent=percent, canary_id=state.canary_id)
        canary = next(
            (c for c in await self.store.canaries_of(run.tenant.id, run.record.alias)
             if c.id == state.canary_id),
            None,
        )  # fmt: skip
        if canary is None or canary.status != "active":
            why = "is gone" if canary is None else f"was {canary.status}: {canary.reason}"
            return Verdict("rollback", f"canary {state.canary_id} {why}", evidence)
        reading = await self.canary_evidence.read(canary)
        verdict = canary_verdict(run.policy, reading, await self._shadow_turn(run))
        verdict.evidence.percent, verdict.evidence.canary_id = percent, state.canary_id
        return verdict

    async def _start_canary(self, run: Run, percent: float) -> Verdict:
        r, state = run.record, run.state
        spec = CanarySpec(
            version=r.version,
            percent=percent,
            thresholds=run.policy.canary.backstop,
            reason=f"rollout {r.id}: step {state.step + 1} of {len(run.policy.canary.steps)}",
        )
        canary = await self.canaries.start(run.tenant, r.alias, spec, run.actor)
        state.canary_id = canary.id
        if state.shadow_id is not None and self.shadows is not None:
            state.shadow_base = await self.shadows.summary(run.tenant, r.alias, r.version)
        detail = f"canary {canary.id} started at {percent:g}%"
        return Verdict("hold", detail, Evidence(percent=percent, canary_id=canary.id))

    async def _shadow_turn(self, run: Run) -> SignalEvidence | None:
        """The shadow's loss test since this canary step began (rolls back only)."""
        if run.state.shadow_id is None or self.shadows is None:
            return None
        r = run.record
        summary = await self.shadows.summary(run.tenant, r.alias, r.version)
        return shadow_signal(run.policy, summary, run.state.shadow_base, required=False)

    async def _full(self, run: Run) -> Verdict:
        """Promotion through the Swapper with the gate, as `/promote` (or the canary's promote,
        which swaps and ends the canary in one step)."""
        r, tenant = run.record, run.tenant
        evidence = Evidence(eval_id=run.state.eval_id, canary_id=run.state.canary_id)
        try:
            passing = await self.evaluations.require_passing(tenant, r.alias, r.version)
            reason = f"rollout {r.id}: every stage passed (eval {passing.id})"
            running = self.canaries.running.get((tenant.id, r.alias))
            if running is not None and running.record.id == run.state.canary_id:
                await self.canaries.promote(tenant, r.alias, run.actor, reason)
            else:
                await self.swapper.promote(
                    tenant, r.alias, r.version, actor=run.actor, reason=reason
                )
        except (Conflict, Unprocessable, NotFound) as exc:  # the gate or the probe said no
            return Verdict("rollback", f"promotion refused: {exc.message}", evidence)
        self.directory.invalidate()
        run.state.canary_id = None  # ended by the promotion
        return Verdict("advance", f"promoted {r.version} onto '{r.alias}'", evidence)

    # -- applying a verdict ---------------------------------------------------------------------

    async def _apply(self, run: Run, verdict: Verdict) -> None:
        state, stage = run.state, run.state.stage
        status, finished = "running", None
        if verdict.action == "hold":
            if verdict.detail == state.held:
                await self._save(run, status, None)  # a renewal of the same hold: not recorded
                return
            state.held = verdict.detail
            action: Action = "hold"
        elif verdict.action == "rollback":
            await self._teardown(run, f"rollout {run.record.id} rolled back: {verdict.detail}")
            status, finished, action = "rolled_back", time.time(), "rollback"
        else:
            action = await self._next(run)
            if action == "promote":
                status, finished = "promoted", time.time()
        decision = Decision(time.time(), stage, action, verdict.detail, verdict.evidence)
        state.decisions.append(decision)
        log.info("rollout %s %s at %s: %s", run.record.id, action, stage, verdict.detail)
        if await self._save(run, status, finished):
            await self._alias_event(run.record, decision, run.actor)

    async def _next(self, run: Run) -> Action:
        """Move past the stage (or canary step) just passed; "promote" when it was the last."""
        state = run.state
        state.held = None
        if state.stage == "full":
            state.stage = "done"
            await self._stop_shadow(run, f"rollout {run.record.id} promoted its version")
            return "promote"
        steps = run.policy.canary.steps
        if state.stage == "canary" and state.step + 1 < len(steps):
            await self._stop_canary(run, f"step passed; next step {steps[state.step + 1]:g}%")
            state.step += 1
            return "advance"
        if state.stage == "shadow" and not (run.policy.shadow.keep_during_canary and steps):
            await self._stop_shadow(run, "the shadow stage passed")
        state.stage = NEXT_STAGE[state.stage]  # type: ignore[assignment]
        return "advance"

    async def _save(self, run: Run, status: str, finished_at: float | None) -> bool:
        r, state = run.record, run.state
        saved = await self.store.save_rollout(
            r.id, self.owner, status, state.stage, msgspec.json.encode(state).decode(), finished_at
        )
        if saved is not None:
            return True
        now = await self.store.get_rollout(r.tenant_id, r.id)
        if now is not None and now.status != "running":  # aborted meanwhile: undo what we did
            await self._teardown(run, f"rollout {r.id} was {now.status}")
        return False

    async def _teardown(self, run: Run, reason: str) -> None:
        await self._stop_canary(run, reason)
        await self._stop_shadow(run, reason)

    async def _stop_canary(self, run: Run, reason: str) -> None:
        canary_id, key = run.state.canary_id, (run.tenant.id, run.record.alias)
        if canary_id is None:
            return
        running = self.canaries.running.get(key)
        if running is not None and running.record.id == canary_id:
            with contextlib.suppress(NotFound):
                await self.canaries.stop(run.tenant, run.record.alias, run.actor, reason)
        else:  # held by no process here: the row says so, the others drop it at their next sync
            await self.store.end_canary(canary_id, "stopped", f"stopped by {run.actor}: {reason}")
        run.state.canary_id = None

    async def _stop_shadow(self, run: Run, reason: str) -> None:
        shadow_id = run.state.shadow_id
        if shadow_id is None or self.shadows is None:
            return
        with contextlib.suppress(NotFound, Conflict):
            await self.shadows.stop(run.tenant, run.record.alias, shadow_id, reason)

    async def _alias_event(self, record: RolloutRecord, decision: Decision, actor: str) -> None:
        alias = await self.store.get_alias(record.tenant_id, record.alias)
        live = self.swapper.current(alias).adapter_version if alias else None
        detail = AliasDecision(record.id, decision.stage, decision.detail, decision.evidence)
        event = AliasEvent(
            0,
            record.tenant_id,
            record.alias,
            f"rollout-{decision.action}",
            live,
            record.version,
            actor,
            msgspec.json.encode(detail).decode(),
            False,
            0.0,
        )
        await self.store.add_alias_event(event)
