"""One promotion pipeline behind the webhook receiver and the watcher.

A trigger names a *slot* (a source model and one of its aliases or stages). The worker reads the
registry, which is the source of truth, and closes the gap: ``promote()`` the version the slot
points at, deploy the ONNX version if configured, or remove the twin's alias when the source's
is gone. A late, repeated or out-of-order trigger changes nothing: the latest registry state
wins. Work for one model runs in arrival order, one job at a time; models run in parallel.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import replace

from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.registry import ownership, trust
from mlflow_deploy_plugins.registry import promote as promote_module
from mlflow_deploy_plugins.registry.audit import AuditLog, AuditRecord
from mlflow_deploy_plugins.registry.automation_config import AutomationConfig, ModelRule
from mlflow_deploy_plugins.registry.decision import (
    Action,
    Slot,
    SlotState,
    explain,
    overrides_someone,
)
from mlflow_deploy_plugins.registry.gateway import RegistryGateway, alias_version, error_message
from mlflow_deploy_plugins.registry.scheduler import OrderedScheduler
from mlflow_deploy_plugins.registry.triggers import Outcome, Trigger
from mlflow_deploy_plugins.targets.deploy import deploy_model

_logger = logging.getLogger(__name__)

#: Outcomes that did work (and left an audit run); the others only leave a log line.
WORK_RESULTS = ("converted", "reused", "removed", "failed", "refused")


#: Set while no preload runs. Conversions wait for it: two threads importing the same modules
#: for the first time can see a partially initialised module (an ImportError that read as a
#: missing package and failed a promotion for good in a watcher's first seconds).
_PRELOAD_DONE = threading.Event()
_PRELOAD_DONE.set()


def start_preload() -> None:
    """Import the conversion stack in a background thread (about 3 s) so the first promotion
    does not pay for it; promotions wait until it is done. For long-running processes (receiver,
    watcher)."""
    _PRELOAD_DONE.clear()
    threading.Thread(target=preload_converters, name="preload", daemon=True).start()


def preload_converters() -> None:
    """Import the conversion stack now (see :func:`start_preload`)."""
    try:
        import onnxruntime  # noqa: F401
        import skl2onnx  # noqa: F401

        import mlflow_deploy_plugins.onnx.convert  # noqa: F401
    except ImportError as e:  # an optional converter missing only matters when it is needed
        _logger.debug("Preloading the converters stopped early: %s", e)
    finally:
        _PRELOAD_DONE.set()


def read_slot_state(
    registry: RegistryGateway,
    slot: Slot,
    source: RegisteredModel,
    twin: RegisteredModel | None,
    twin_name: str,
    deployment_tags: Sequence[str] = (),
    twin_source_of: Callable[[str, str], str | None] | None = None,
) -> SlotState:
    """Both sides of ``slot`` as the registry has them now (the input of :func:`decide`).

    Args:
        registry: where to read versions from.
        slot: the source slot.
        source: the source's registered model (its aliases).
        twin: the twin's registered model (its aliases and deployment tags), None if absent.
        twin_name: the twin's name (whether it exists or not).
        deployment_tags: the twin tags recording what each configured deployment serves.
        twin_source_of: ``(twin name, version) -> source version`` (default: read its tag).
    """
    if slot.kind == "alias":
        current = alias_version(source, slot.label)
        twin_version = alias_version(twin, slot.label)
        twin_versions = () if twin_version is None else (twin_version,)
        source_of = twin_source_of or (
            lambda name, version: registry.client.get_model_version(name, version).tags.get(
                tag_keys.SOURCE_VERSION
            )
        )
        twin_source = None if twin_version is None else source_of(twin_name, twin_version)
    else:
        newest = registry.newest_in_stage(source.name, slot.label)
        current = None if newest is None else str(newest.version)
        in_stage = [] if twin is None else registry.versions_in_stage(twin_name, slot.label)
        twin_versions = tuple(str(mv.version) for mv in in_stage)
        twin_source = in_stage[0].tags.get(tag_keys.SOURCE_VERSION) if in_stage else None
    deployed = tuple(None if twin is None else twin.tags.get(tag) for tag in deployment_tags)
    newest = twin_versions[0] if twin_versions else None
    owner = ownership.slot_owner(None if twin is None else twin.tags, slot.kind, slot.label, newest)
    return SlotState(current, twin_versions, twin_source, deployed, twin_set_by=owner)


class Pipeline:
    """Serialises work per model, runs models in parallel, never lets a failure escape.

    Args:
        config: which models, aliases/stages, options and deployments.
        client: registry client (default: ``MlflowClient()`` from the environment).
        workers: models processed at the same time.
        audit: where audit runs go (default: ``config.audit_experiment``).
    """

    def __init__(
        self,
        config: AutomationConfig,
        *,
        client: MlflowClient | None = None,
        workers: int = 4,
        audit: AuditLog | None = None,
    ):
        self.config = config
        self.registry = RegistryGateway(client)
        self.client = self.registry.client
        self.audit = audit or AuditLog(config.audit_experiment, self.client)
        self._scheduler: OrderedScheduler[Trigger, Outcome] = OrderedScheduler(
            self._run,
            key=lambda trigger: trigger.slot.model,
            same=lambda trigger: trigger.slot,
            merge=Trigger.merge,
            workers=workers,
            thread_name_prefix="mlflow-deploy-pipeline",
        )
        self._finished: dict[tuple[Slot, str | None], float] = {}
        self._logged_failed: set[tuple[Slot, str]] = set()
        self._counts_lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    # ----------------------------------------------------------------------- scheduling
    def submit(self, trigger: Trigger) -> Future:
        """Queue ``trigger``; returns a Future of its :class:`Outcome`. Never blocks on work.

        A trigger for a slot that already has a pending (not started) job joins that job.
        """
        return self._scheduler.submit(trigger)

    def pending(self) -> int:
        return self._scheduler.pending()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued job is done; False on timeout."""
        return self._scheduler.drain(timeout)

    def close(self, wait: bool = True) -> None:
        self._scheduler.close(wait)

    def _run(self, trigger: Trigger) -> Outcome:
        try:
            outcome = self.process(trigger)
        except Exception as e:  # a bug or an unreachable registry: log, keep serving
            _logger.exception("Automation for %s failed unexpectedly", trigger.slot)
            outcome = Outcome(trigger.slot, "failed", reason=f"{type(e).__name__}: {e}")
        with self._counts_lock:
            self.counts[outcome.result] += 1
        return outcome

    # ----------------------------------------------------------------------- the work
    def process(self, trigger: Trigger) -> Outcome:
        """Bring one slot in line with the registry, synchronously."""
        slot = trigger.slot
        rule = self.config.rule_for(slot.model)
        if rule is None or not rule.watches(slot.kind, slot.label):
            return self._log(Outcome(slot, "ignored", reason="not in the automation config"))
        source = self.registry.registered_model(slot.model)
        if source is None:
            return self._log(Outcome(slot, "ignored", reason="no such registered model"))
        if source.tags.get(tag_keys.KIND) == "onnx":
            return self._log(Outcome(slot, "ignored", reason="an ONNX twin (ours)"))
        twin_name = rule.onnx_name_for(slot.model)
        twin = self.registry.registered_model(twin_name)
        deployments = rule.slot_deployments(slot.model, slot.kind, slot.label)
        state = read_slot_state(
            self.registry, slot, source, twin, twin_name, [d.tag for d in deployments]
        )
        current = state.source_version
        key = (slot, current)
        if self._finished.get(key, -math.inf) >= trigger.enqueued_at:
            return Outcome(
                slot, "covered", current, state.twin_version, "handled since this trigger"
            )
        try:
            source_mv = None
            if current is not None:
                if trigger.version is not None and trigger.version != current:
                    _logger.info(
                        "%s: event named v%s, the registry now says v%s: following the registry",
                        slot,
                        trigger.version,
                        current,
                    )
                source_mv = self.client.get_model_version(slot.model, current)
                failed = source_mv.tags.get(tag_keys.STATUS) == tag_keys.STATUS_FAILED
                state = replace(state, source_failed=failed)
            action, reason = explain(
                state,
                remove_on_delete=self.config.remove_alias_on_delete,
                retry_failed=trigger.explicit,
            )
            # undoing what a person set is said louder than the automation's own work
            level = logging.WARNING if overrides_someone(state) else logging.INFO
            _logger.log(level, "%s (%s): %s because %s", slot, trigger.event, action.value, reason)
            if action is Action.PROMOTE:
                return self._promote(trigger, rule, state, source_mv, twin_name, twin)
            if action is Action.REMOVE:
                return self._remove(trigger, state, twin_name)
            if action is Action.KEEP:
                return self._log(Outcome(slot, "skipped", None, state.twin_version, reason))
            if action is Action.SKIP_FAILED:
                self._warn_failed_once(trigger, source_mv)
                return Outcome(slot, "skipped", current, state.twin_version, "failed before")
            return Outcome(slot, "up_to_date", current, state.twin_version, reason)
        finally:
            self._finished[key] = time.monotonic()

    def _warn_failed_once(self, trigger: Trigger, source_mv: ModelVersion) -> None:
        key = (trigger.slot, str(source_mv.version))
        if key in self._logged_failed:  # every reconcile pass would repeat it
            return
        self._logged_failed.add(key)
        _logger.warning(
            "%s v%s failed before (%s): not retrying on %s; set the alias again or "
            "delete the tag %s to retry",
            trigger.slot,
            source_mv.version,
            source_mv.tags.get(tag_keys.ERROR, "no reason recorded"),
            trigger.event,
            tag_keys.STATUS,
        )

    def _promote(
        self,
        trigger: Trigger,
        rule: ModelRule,
        state: SlotState,
        source_mv: ModelVersion,
        twin_name: str,
        twin: RegisteredModel | None,
    ) -> Outcome:
        slot, current = trigger.slot, state.source_version
        record = self._record(trigger, "failed", twin_name, state.twin_version, current)
        _PRELOAD_DONE.wait(120)  # bounded: a stuck preload only costs the time
        t0 = time.monotonic()
        record.timings["queue"] = t0 - trigger.enqueued_at
        try:
            result = promote_module.promote(
                slot.model,
                current,
                slot.label if slot.kind == "alias" else None,
                stage=slot.label if slot.kind == "stage" else None,
                onnx_name=twin_name,
                client=self.client,
                alias_source=False,  # the source's alias is what triggered this
                promoted_by=ownership.path_of(trigger.event),
                check_source=lambda uri: trust.check_trusted(
                    uri, rule.trust_pickle, rule.trust_key
                ),
                **rule.promote,
            )
        except trust.UntrustedModelError as e:
            return self._refuse(record, t0, e)
        except Exception as e:
            # promote() tagged the source when the conversion itself failed; a refusal before any
            # work (e.g. the twin's name is taken) is tagged here so it is never silent.
            self.registry.tag_source_failed(slot.model, current, e)
            return self._finish(record, t0, error=e)
        record.timings["promote"] = time.monotonic() - t0
        record.onnx_version, record.parity = result.onnx_version, dict(result.parity)
        record.result = "reused" if result.reused else "converted"
        deployed = []
        for deployment in rule.slot_deployments(slot.model, slot.kind, slot.label):
            uri = f"models:/{twin_name}/{result.onnx_version}"
            record.target, record.deployment = deployment.spec.target, deployment.name
            record.deployed_model_uri = uri
            if twin is not None and twin.tags.get(deployment.tag) == result.onnx_version:
                continue
            t1 = time.monotonic()
            try:
                deploy_model(deployment.spec.target, deployment.name, uri, deployment.spec.config)
            except Exception as e:
                self._roll_back(slot, twin_name, state.twin_version, result.onnx_version)
                message = (
                    f"deployment '{deployment.name}' on target '{deployment.spec.target}' "
                    f"failed: {e}"
                )
                self.registry.tag_source_failed(slot.model, current, message)
                self.registry.set_version_tags(
                    twin_name,
                    result.onnx_version,
                    {
                        tag_keys.DEPLOY_STATUS: tag_keys.STATUS_FAILED,
                        tag_keys.DEPLOY_ERROR: message,
                    },
                    best_effort=True,
                )
                return self._finish(record, t0, error=message)
            record.timings["deploy"] = record.timings.get("deploy", 0.0) + time.monotonic() - t1
            self.client.set_registered_model_tag(twin_name, deployment.tag, result.onnx_version)
            self.registry.set_version_tags(
                twin_name,
                result.onnx_version,
                {tag_keys.DEPLOY_STATUS: tag_keys.STATUS_DEPLOYED},
                best_effort=True,
            )
            deployed.append(f"{deployment.spec.target}:{deployment.name}")
        if slot.kind == "stage":
            self._archive_others(twin_name, slot.label, result.onnx_version)
        if source_mv.tags.get(tag_keys.STATUS) != tag_keys.STATUS_CONVERTED:  # retry after failure
            self.registry.set_version_tags(
                slot.model, current, {tag_keys.STATUS: tag_keys.STATUS_CONVERTED}, best_effort=True
            )
            self.registry.delete_version_tag(slot.model, current, tag_keys.ERROR)
        return self._finish(record, t0, deployments=tuple(deployed))

    def _refuse(self, record: AuditRecord, t0: float, error: Exception) -> Outcome:
        """An untrusted format: audited, the reason on the source, no retry until it changes.

        The source is tagged ``refused``, not ``failed``: once the config trusts the model, the
        next pass (a restart) converts it without waiting for the alias to be set again.
        """
        slot = Slot(record.source_model, record.kind, record.label)
        self.registry.set_version_tags(
            slot.model,
            record.source_version,
            {tag_keys.STATUS: tag_keys.STATUS_REFUSED, tag_keys.ERROR: error_message(error)},
            best_effort=True,
        )
        return self._finish(record, t0, error=error, result="refused")

    def _remove(self, trigger: Trigger, state: SlotState, twin_name: str) -> Outcome:
        slot = trigger.slot
        t0 = time.monotonic()
        record = self._record(trigger, "removed", twin_name, state.twin_version)
        if slot.kind == "alias":
            self.client.delete_registered_model_alias(twin_name, slot.label)
        else:
            for version in state.twin_versions:
                self.client.transition_model_version_stage(twin_name, version, "Archived")
        prefix = ownership.record_prefix(slot.kind, slot.label)
        for key in (ownership.SOURCE_VERSION, ownership.TWIN_VERSION, ownership.SET_BY):
            self.registry.delete_model_tag(twin_name, prefix + key)
        return self._finish(record, t0)

    # ----------------------------------------------------------------------- writes
    def _roll_back(self, slot: Slot, twin_name: str, previous: str | None, new: str) -> None:
        """Put the twin's alias/stage back where it was before this attempt."""
        if new == previous:
            return
        try:
            if slot.kind == "stage":
                self.client.transition_model_version_stage(twin_name, new, "None")
            elif previous is None:
                self.client.delete_registered_model_alias(twin_name, slot.label)
            else:
                self.client.set_registered_model_alias(twin_name, slot.label, previous)
        except MlflowException as e:
            _logger.error("%s: could not roll the ONNX %s back: %s", slot, slot.kind, e)

    def _archive_others(self, twin_name: str, stage: str, keep: str) -> None:
        for mv in self.registry.versions_in_stage(twin_name, stage):
            if str(mv.version) != keep:
                self.client.transition_model_version_stage(twin_name, mv.version, "Archived")

    # ----------------------------------------------------------------------- audit and log
    @staticmethod
    def _record(
        trigger: Trigger,
        result: str,
        twin_name: str,
        previous: str | None,
        source_version: str | None = None,
    ) -> AuditRecord:
        slot = trigger.slot
        return AuditRecord(
            trigger.event,
            slot.model,
            slot.kind,
            slot.label,
            result,
            source_version=source_version,
            onnx_model=twin_name,
            previous_onnx_version=previous,
            delivery_ids=trigger.delivery_ids,
        )

    def _finish(
        self, record: AuditRecord, t0: float, *, error=None, deployments=(), result="failed"
    ) -> Outcome:
        record.timings["total"] = time.monotonic() - t0
        record.ended_at = time.time()
        if error is not None:
            record.result = result
            record.error = error_message(error)
        self.audit.record(record)
        slot = Slot(record.source_model, record.kind, record.label)
        outcome = Outcome(
            slot,
            record.result,
            record.source_version,
            record.onnx_version,
            record.error,
            tuple(deployments),
        )
        return self._log(outcome)

    @staticmethod
    def _log(outcome: Outcome) -> Outcome:
        level = {"failed": logging.ERROR, "refused": logging.WARNING}.get(outcome.result)
        _logger.log(level or logging.INFO, outcome)
        return outcome
