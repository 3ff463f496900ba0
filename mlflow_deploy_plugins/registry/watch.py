"""Reconciler: registry state -> desired ONNX twins. Webhooks only wake it up sooner.

Each pass lists the configured source models and, for every watched alias or stage, compares the
version it points at with the twin's (``<name>-onnx``) alias or stage; each gap becomes a trigger
for the pipeline. Nothing is stored locally: after a restart the same comparison finds the same
gaps, so no work is done twice. ``mlflow-deploy watch`` is this loop on its own (file stores,
older servers, managed registries without webhooks); the webhook receiver runs it too.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import Future

from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.registry.automation_config import AutomationConfig, ModelRule
from mlflow_deploy_plugins.registry.pipeline import (
    Outcome,
    Pipeline,
    Slot,
    Trigger,
    preload_converters,
)

_logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 60.0


class Reconciler:
    """Finds the slots whose twin lags behind the source and submits them to ``pipeline``.

    Args:
        pipeline: does the work (and serialises it per model).
        event: what audit runs record as the event (``poll`` for the watcher, ``reconcile`` for
            the receiver's periodic pass).
    """

    def __init__(self, pipeline: Pipeline, event: str = "poll"):
        self.pipeline = pipeline
        self.event = event
        self._seen: dict[Slot, str | None] = {}  # source version per slot at the last pass
        self._twin_source: dict[tuple[str, str], str | None] = {}  # (twin, version) -> source v
        self._quiet: set[tuple[Slot, str | None]] = set()  # skipped: wait for a change
        self._lock = threading.Lock()

    @property
    def client(self) -> MlflowClient:
        return self.pipeline.client

    def run_once(self) -> list[Future]:
        """One pass: submit every gap; returns the Futures of their :class:`Outcome`."""
        futures = []
        for trigger in self.scan():
            future = self.pipeline.submit(trigger)
            future.add_done_callback(self._note(trigger))
            futures.append(future)
        return futures

    def run_forever(self, interval: float, stop: threading.Event) -> None:
        """A pass now, then every ``interval`` seconds until ``stop`` is set. Never raises."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # registry down, bad credentials...: retry next interval
                _logger.exception("Reconcile pass failed; retrying in %.0f s", interval)
            stop.wait(interval)

    def scan(self) -> list[Trigger]:
        """The triggers one pass would submit (reads the registry, writes nothing)."""
        config = self.pipeline.config
        models = _all_registered_models(self.client)
        by_name = {rm.name: rm for rm in models}
        triggers = []
        for rm in models:
            rule = config.rule_for(rm.name)
            if rule is None or rm.tags.get(tag_keys.KIND) == "onnx":
                continue
            twin = by_name.get(rule.onnx_name_for(rm.name))
            for kind, label, current, twin_version, twin_source in self._slots(rm, rule, twin):
                slot = Slot(rm.name, kind, label)
                with self._lock:
                    changed = slot in self._seen and self._seen[slot] != current
                    self._seen[slot] = current
                    if changed:
                        self._quiet.discard((slot, current))
                    quiet = (slot, current) in self._quiet
                if quiet or self._in_sync(rule, slot, current, twin, twin_version, twin_source):
                    continue
                triggers.append(Trigger(slot, self.event, current, explicit=changed))
        return triggers

    # ----------------------------------------------------------------------- helpers
    def _slots(self, rm, rule: ModelRule, twin):
        """(kind, label, source version, twin version, twin's source version) per watched slot."""
        twin_name = rule.onnx_name_for(rm.name)
        for alias in rule.aliases:
            current = (rm.aliases or {}).get(alias)
            twin_version = (twin.aliases or {}).get(alias) if twin is not None else None
            twin_version = None if twin_version is None else str(twin_version)
            yield (
                "alias",
                alias,
                None if current is None else str(current),
                twin_version,
                self._source_of(twin_name, twin_version),
            )
        for stage in rule.stages:
            current = _newest_in_stage(self.client, rm.name, stage)
            twin_mv = _newest_in_stage(self.client, twin_name, stage, full=True) if twin else None
            yield (
                "stage",
                stage,
                current,
                None if twin_mv is None else str(twin_mv.version),
                None if twin_mv is None else twin_mv.tags.get(tag_keys.SOURCE_VERSION),
            )

    def _source_of(self, twin_name: str, version: str | None) -> str | None:
        """The source version a twin version was converted from (immutable, so cached)."""
        if version is None:
            return None
        key = (twin_name, version)
        if key not in self._twin_source:
            mv = self.client.get_model_version(twin_name, version)
            self._twin_source[key] = mv.tags.get(tag_keys.SOURCE_VERSION)
        return self._twin_source[key]

    def _in_sync(self, rule, slot, current, twin, twin_version, twin_source) -> bool:
        if current is None:
            return twin_version is None or not self.pipeline.config.remove_alias_on_delete
        if twin_source != current:
            return False
        for spec in rule.deployments_for(slot.kind, slot.label):
            name = spec.deployment_name(slot.model, slot.label, rule.onnx_name_for(slot.model))
            if (
                twin is None
                or twin.tags.get(tag_keys.deployment_tag(spec.target, name)) != twin_version
            ):
                return False
        return True

    def _note(self, trigger: Trigger):
        def done(future: Future) -> None:
            outcome: Outcome = future.result()
            if outcome.result == "skipped":  # a version that failed before: wait for a change
                with self._lock:
                    self._quiet.add((trigger.slot, outcome.source_version))

        return done


def _all_registered_models(client: MlflowClient) -> list:
    out, token = [], None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _newest_in_stage(client: MlflowClient, name: str, stage: str, full: bool = False):
    versions = [
        mv for mv in client.search_model_versions(f"name='{name}'") if mv.current_stage == stage
    ]
    if not versions:
        return None
    newest = max(versions, key=lambda mv: int(mv.version))
    return newest if full else str(newest.version)


def watch(
    config: AutomationConfig,
    *,
    interval: float = DEFAULT_INTERVAL_S,
    once: bool = False,
    client: MlflowClient | None = None,
    workers: int = 4,
    stop: threading.Event | None = None,
) -> list[Outcome]:
    """Poll the registry and promote (and deploy) what the config asks for.

    Args:
        config: models, aliases/stages, options, deployments.
        interval: seconds between passes.
        once: one pass, wait for its work, return its outcomes (for cron jobs and CI).
        stop: set it to end the loop (default: SIGTERM/SIGINT end it, on the main thread).

    Returns:
        With ``once``, the outcomes of that pass; otherwise an empty list after ``stop``.
    """
    pipeline = Pipeline(config, client=client, workers=workers)
    reconciler = Reconciler(pipeline, event="poll")
    try:
        if once:
            futures = reconciler.run_once()
            pipeline.drain()
            return [f.result() for f in futures]
        stop = stop or _stop_on_signals()
        threading.Thread(target=preload_converters, name="preload", daemon=True).start()
        _logger.info("Watching the registry every %.0f s (Ctrl+C to stop)", interval)
        reconciler.run_forever(interval, stop)
        pipeline.drain()
        return []
    finally:
        pipeline.close()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    return stop
