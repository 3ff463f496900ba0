"""One promotion pipeline behind the webhook receiver and the watcher.

A trigger names a *slot* (a source model and one of its aliases or stages). The worker reads the
registry, which is the source of truth, and closes the gap: ``promote()`` the version the slot
points at, deploy the ONNX version if configured, or remove the twin's alias when the source's
is gone. A late, repeated or out-of-order trigger changes nothing: the latest registry state
wins. Work for one model runs in arrival order, one job at a time; models run in parallel.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.registry import promote as promote_module
from mlflow_deploy_plugins.registry.audit import AuditLog, AuditRecord
from mlflow_deploy_plugins.registry.automation_config import AutomationConfig, ModelRule

_logger = logging.getLogger(__name__)

#: Outcomes that did work (and left an audit run); the others only leave a log line.
WORK_RESULTS = ("converted", "reused", "removed", "failed")


def deploy_model(target: str, name: str, model_uri: str, config: dict[str, str]) -> str:
    """Create deployment ``name`` on ``target``, or update it when it exists, through MLflow's
    public deployments API (the target plugin does the work). Returns created/updated/unchanged.
    """
    from mlflow.deployments import get_deploy_client

    client = get_deploy_client(target)
    try:
        existing = client.get_deployment(name)
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        existing = None
    if not existing:
        client.create_deployment(name, model_uri, config=dict(config))
        return "created"
    if existing.get("model_uri") == model_uri:
        return "unchanged"
    client.update_deployment(name, model_uri=model_uri, config=dict(config))
    return "updated"


def preload_converters() -> None:
    """Import the conversion stack now (about 3 s) so the first promotion does not pay for it.

    For long-running processes (receiver, watcher); run it in a background thread.
    """
    try:
        import onnxruntime  # noqa: F401
        import skl2onnx  # noqa: F401

        import mlflow_deploy_plugins.onnx.convert  # noqa: F401
    except ImportError as e:  # an optional converter missing only matters when it is needed
        _logger.debug("Preloading the converters stopped early: %s", e)


@dataclass(frozen=True)
class Slot:
    """A source model's alias (``kind="alias"``) or legacy stage (``kind="stage"``)."""

    model: str
    kind: str
    label: str

    def __str__(self) -> str:
        return (
            f"{self.model}@{self.label}" if self.kind == "alias" else f"{self.model}[{self.label}]"
        )


@dataclass
class Trigger:
    """Why a slot should be looked at now (a webhook delivery, a poll, a reconcile pass)."""

    slot: Slot
    event: str  # model_version_alias.created | model_version_alias.deleted | reconcile | poll
    version: str | None = None  # what the event said; the registry decides
    explicit: bool = False  # a promotion just happened: retry a version that failed before
    delivery_ids: tuple[str, ...] = ()
    enqueued_at: float = field(default_factory=time.monotonic)
    received_at: float = field(default_factory=time.time)

    def merge(self, newer: Trigger) -> Trigger:
        """One pending job per slot: the newer trigger's facts, both triggers' ids."""
        ids = self.delivery_ids + tuple(i for i in newer.delivery_ids if i not in self.delivery_ids)
        return replace(
            newer,
            explicit=self.explicit or newer.explicit,
            delivery_ids=ids,
            received_at=min(self.received_at, newer.received_at),
        )


@dataclass
class Outcome:
    """What the pipeline did for one trigger."""

    slot: Slot
    result: str  # converted | reused | removed | failed | up_to_date | covered | skipped | ignored
    source_version: str | None = None
    onnx_version: str | None = None
    reason: str | None = None
    deployments: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.result != "failed"


@dataclass
class _Twin:
    name: str
    registered_model: object | None  # RegisteredModel or None when it does not exist yet
    version: str | None  # twin version the slot points at
    source_version: str | None  # its mlflow_deploy.source_version tag
    stage_versions: tuple[str, ...] = ()  # every twin version in the stage (stage slots)

    def deployed_version(self, tag_key: str) -> str | None:
        rm = self.registered_model
        return rm.tags.get(tag_key) if rm is not None else None


@dataclass
class _Job:
    trigger: Trigger
    future: Future = field(default_factory=Future)


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
        self.client = client or MlflowClient()
        self.audit = audit or AuditLog(config.audit_experiment, self.client)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="mlflow-deploy-pipeline")
        self._lock = threading.Condition()
        self._queues: dict[str, deque[_Job]] = {}
        self._running: set[str] = set()
        self._finished: dict[tuple[Slot, str | None], float] = {}
        self._logged_failed: set[tuple[Slot, str]] = set()
        self.counts: Counter[str] = Counter()

    # ----------------------------------------------------------------------- scheduling
    def submit(self, trigger: Trigger) -> Future:
        """Queue ``trigger``; returns a Future of its :class:`Outcome`. Never blocks on work.

        A trigger for a slot that already has a pending (not started) job joins that job.
        """
        model = trigger.slot.model
        with self._lock:
            queue = self._queues.setdefault(model, deque())
            for job in queue:
                if job.trigger.slot == trigger.slot:
                    job.trigger = job.trigger.merge(trigger)
                    return job.future
            job = _Job(trigger)
            queue.append(job)
            if model not in self._running:
                self._running.add(model)
                self._executor.submit(self._drain, model)
            return job.future

    def pending(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values()) + len(self._running)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued job is done; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._queues or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def close(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)

    def _drain(self, model: str) -> None:
        while True:
            with self._lock:
                queue = self._queues.get(model)
                if not queue:
                    self._queues.pop(model, None)
                    self._running.discard(model)
                    self._lock.notify_all()
                    return
                job = queue.popleft()
            try:
                outcome = self.process(job.trigger)
            except Exception as e:  # a bug or an unreachable registry: log, keep serving
                _logger.exception("Automation for %s failed unexpectedly", job.trigger.slot)
                outcome = Outcome(job.trigger.slot, "failed", reason=f"{type(e).__name__}: {e}")
            with self._lock:
                self.counts[outcome.result] += 1
            job.future.set_result(outcome)

    # ----------------------------------------------------------------------- the work
    def process(self, trigger: Trigger) -> Outcome:
        """Bring one slot in line with the registry, synchronously."""
        slot = trigger.slot
        rule = self.config.rule_for(slot.model)
        if rule is None or not rule.watches(slot.kind, slot.label):
            return self._log(Outcome(slot, "ignored", reason="not in the automation config"))
        try:
            source = self.client.get_registered_model(slot.model)
        except MlflowException as e:
            if e.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            return self._log(Outcome(slot, "ignored", reason="no such registered model"))
        if source.tags.get(tag_keys.KIND) == "onnx":
            return self._log(Outcome(slot, "ignored", reason="an ONNX twin (ours)"))
        current = self._source_version(source, slot)
        twin = self._twin(rule.onnx_name_for(slot.model), slot)
        key = (slot, current)
        if self._finished.get(key, -math.inf) >= trigger.enqueued_at:
            return Outcome(slot, "covered", current, twin.version, "handled since this trigger")
        try:
            if current is None:
                return self._remove(trigger, twin)
            if trigger.version is not None and trigger.version != current:
                _logger.info(
                    "%s: event named v%s, the registry now says v%s: following the registry",
                    slot,
                    trigger.version,
                    current,
                )
            specs = rule.deployments_for(slot.kind, slot.label)
            names = [s.deployment_name(slot.model, slot.label, twin.name) for s in specs]
            if twin.source_version == current and all(
                twin.deployed_version(tag_keys.deployment_tag(s.target, n)) == twin.version
                for s, n in zip(specs, names, strict=True)
            ):
                return Outcome(slot, "up_to_date", current, twin.version)
            source_mv = self.client.get_model_version(slot.model, current)
            if (
                source_mv.tags.get(tag_keys.STATUS) == tag_keys.STATUS_FAILED
                and not trigger.explicit
            ):
                if (slot, current) not in self._logged_failed:
                    self._logged_failed.add((slot, current))
                    _logger.warning(
                        "%s v%s failed before (%s): not retrying on %s; set the alias again or "
                        "delete the tag %s to retry",
                        slot,
                        current,
                        source_mv.tags.get(tag_keys.ERROR, "no reason recorded"),
                        trigger.event,
                        tag_keys.STATUS,
                    )
                return Outcome(slot, "skipped", current, twin.version, "failed before")
            return self._promote(trigger, rule, current, source_mv, twin)
        finally:
            self._finished[key] = time.monotonic()

    def _promote(self, trigger, rule: ModelRule, current: str, source_mv, twin: _Twin) -> Outcome:
        slot = trigger.slot
        record = AuditRecord(
            trigger.event,
            slot.model,
            slot.kind,
            slot.label,
            "failed",
            source_version=current,
            onnx_model=twin.name,
            previous_onnx_version=twin.version,
            delivery_ids=trigger.delivery_ids,
        )
        t0 = time.monotonic()
        record.timings["queue"] = t0 - trigger.enqueued_at
        alias = slot.label if slot.kind == "alias" else None
        stage = slot.label if slot.kind == "stage" else None
        try:
            result = promote_module.promote(
                slot.model,
                current,
                alias,
                stage=stage,
                onnx_name=twin.name,
                client=self.client,
                **rule.promote,
            )
        except Exception as e:
            # promote() tagged the source when the conversion itself failed; a refusal before any
            # work (e.g. the twin's name is taken) is tagged here so it is never silent.
            self._tag_source_failed(slot.model, current, e)
            return self._finish(record, t0, error=e)
        record.timings["promote"] = time.monotonic() - t0
        record.onnx_version, record.parity = result.onnx_version, dict(result.parity)
        record.result = "reused" if result.reused else "converted"
        deployed = []
        for spec in rule.deployments_for(slot.kind, slot.label):
            name = spec.deployment_name(slot.model, slot.label, twin.name)
            tag = tag_keys.deployment_tag(spec.target, name)
            uri = f"models:/{twin.name}/{result.onnx_version}"
            record.target, record.deployment, record.deployed_model_uri = spec.target, name, uri
            if twin.deployed_version(tag) == result.onnx_version:
                continue
            t1 = time.monotonic()
            try:
                deploy_model(spec.target, name, uri, spec.config)
            except Exception as e:
                self._roll_back(slot, twin, result.onnx_version)
                message = f"deployment '{name}' on target '{spec.target}' failed: {e}"
                self._tag_source_failed(slot.model, current, message)
                self._set_tags(
                    twin.name,
                    result.onnx_version,
                    {
                        tag_keys.DEPLOY_STATUS: tag_keys.STATUS_FAILED,
                        tag_keys.DEPLOY_ERROR: tag_keys.clip(message),
                    },
                )
                record.result = "failed"
                return self._finish(record, t0, error=message)
            record.timings["deploy"] = record.timings.get("deploy", 0.0) + time.monotonic() - t1
            self.client.set_registered_model_tag(twin.name, tag, result.onnx_version)
            self._set_tags(
                twin.name, result.onnx_version, {tag_keys.DEPLOY_STATUS: tag_keys.STATUS_DEPLOYED}
            )
            deployed.append(f"{spec.target}:{name}")
        if slot.kind == "stage":
            self._archive_others(twin.name, slot.label, result.onnx_version)
        if (
            source_mv.tags.get(tag_keys.STATUS) != tag_keys.STATUS_CONVERTED
        ):  # a retry after a failure
            self._set_tags(slot.model, current, {tag_keys.STATUS: tag_keys.STATUS_CONVERTED})
            self._delete_tag(slot.model, current, tag_keys.ERROR)
        return self._finish(record, t0, deployments=tuple(deployed))

    def _remove(self, trigger: Trigger, twin: _Twin) -> Outcome:
        slot = trigger.slot
        doomed = twin.stage_versions if slot.kind == "stage" else (twin.version,)
        doomed = tuple(v for v in doomed if v)
        if not doomed:
            return Outcome(slot, "up_to_date")
        if not self.config.remove_alias_on_delete:
            return self._log(
                Outcome(slot, "skipped", None, twin.version, "remove_alias_on_delete is false")
            )
        t0 = time.monotonic()
        record = AuditRecord(
            trigger.event,
            slot.model,
            slot.kind,
            slot.label,
            "removed",
            onnx_model=twin.name,
            previous_onnx_version=twin.version,
            delivery_ids=trigger.delivery_ids,
        )
        if slot.kind == "alias":
            self.client.delete_registered_model_alias(twin.name, slot.label)
        else:
            for version in doomed:
                self.client.transition_model_version_stage(twin.name, version, "Archived")
        return self._finish(record, t0)

    # ----------------------------------------------------------------------- registry reads
    def _source_version(self, rm, slot: Slot) -> str | None:
        if slot.kind == "alias":
            version = (rm.aliases or {}).get(slot.label)
            return None if version is None else str(version)
        versions = self._stage_versions(rm.name, slot.label)
        return versions[0][0] if versions else None

    def _twin(self, name: str, slot: Slot) -> _Twin:
        try:
            rm = self.client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            return _Twin(name, None, None, None)
        if slot.kind == "stage":
            versions = self._stage_versions(name, slot.label)
            if not versions:
                return _Twin(name, rm, None, None)
            version, tags = versions[0]
            return _Twin(
                name, rm, version, tags.get(tag_keys.SOURCE_VERSION), tuple(v for v, _ in versions)
            )
        version = (rm.aliases or {}).get(slot.label)
        if version is None:
            return _Twin(name, rm, None, None)
        mv = self.client.get_model_version(name, str(version))
        return _Twin(name, rm, str(version), mv.tags.get(tag_keys.SOURCE_VERSION))

    def _stage_versions(self, name: str, stage: str) -> list[tuple[str, dict]]:
        """(version, tags) in ``stage``, newest first (what get_latest_versions would pick)."""
        found = [
            (str(mv.version), dict(mv.tags))
            for mv in self.client.search_model_versions(f"name='{name}'")
            if mv.current_stage == stage
        ]
        return sorted(found, key=lambda item: int(item[0]), reverse=True)

    # ----------------------------------------------------------------------- writes
    def _roll_back(self, slot: Slot, twin: _Twin, new_version: str) -> None:
        """Put the twin's alias/stage back where it was before this attempt."""
        if new_version == twin.version:
            return
        try:
            if slot.kind == "stage":
                self.client.transition_model_version_stage(twin.name, new_version, "None")
            elif twin.version is None:
                self.client.delete_registered_model_alias(twin.name, slot.label)
            else:
                self.client.set_registered_model_alias(twin.name, slot.label, twin.version)
        except MlflowException as e:
            _logger.error("%s: could not roll the ONNX %s back: %s", slot, slot.kind, e)

    def _archive_others(self, twin_name: str, stage: str, keep: str) -> None:
        for version, _ in self._stage_versions(twin_name, stage):
            if version != keep:
                self.client.transition_model_version_stage(twin_name, version, "Archived")

    def _tag_source_failed(self, name: str, version: str, error) -> None:
        message = getattr(error, "message", None) or str(error)
        self._set_tags(
            name,
            version,
            {tag_keys.STATUS: tag_keys.STATUS_FAILED, tag_keys.ERROR: tag_keys.clip(message)},
        )

    def _set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        try:
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, value)
        except MlflowException as e:
            _logger.warning("Could not tag %s v%s: %s", name, version, e)

    def _delete_tag(self, name: str, version: str, key: str) -> None:
        with contextlib.suppress(MlflowException):  # not there: nothing to clean
            self.client.delete_model_version_tag(name, version, key)

    def _finish(self, record: AuditRecord, t0: float, *, error=None, deployments=()) -> Outcome:
        record.timings["total"] = time.monotonic() - t0
        record.ended_at = time.time()
        if error is not None:
            record.result = "failed"
            record.error = getattr(error, "message", None) or str(error)
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
        level = logging.ERROR if outcome.result == "failed" else logging.INFO
        parts = [f"{outcome.slot}: {outcome.result}"]
        if outcome.source_version:
            parts.append(f"source v{outcome.source_version}")
        if outcome.onnx_version:
            parts.append(f"ONNX v{outcome.onnx_version}")
        if outcome.deployments:
            parts.append("deployed to " + ", ".join(outcome.deployments))
        if outcome.reason:
            parts.append(f"({outcome.reason})")
        _logger.log(level, " ".join(parts))
        return outcome
