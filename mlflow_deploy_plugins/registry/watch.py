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
from mlflow_deploy_plugins.registry.automation_config import AutomationConfig
from mlflow_deploy_plugins.registry.decision import Slot, SlotState, explain
from mlflow_deploy_plugins.registry.gateway import RegistryGateway
from mlflow_deploy_plugins.registry.pipeline import Pipeline, read_slot_state, start_preload
from mlflow_deploy_plugins.registry.triggers import Outcome, Trigger

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
        self._said: dict[Slot, str] = {}  # the last decision logged per slot: log changes only
        self._lock = threading.Lock()

    @property
    def client(self) -> MlflowClient:
        return self.pipeline.client

    @property
    def registry(self) -> RegistryGateway:
        return self.pipeline.registry

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
        models = self.registry.registered_models()
        by_name = {rm.name: rm for rm in models}
        triggers = []
        for rm in models:
            rule = config.rule_for(rm.name)
            if rule is None or rm.tags.get(tag_keys.KIND) == "onnx":
                continue
            twin_name = rule.onnx_name_for(rm.name)
            for kind, labels in (("alias", rule.aliases), ("stage", rule.stages)):
                for label in labels:
                    slot = Slot(rm.name, kind, label)
                    tags = [d.tag for d in rule.slot_deployments(rm.name, kind, label)]
                    state = read_slot_state(
                        self.registry,
                        slot,
                        rm,
                        by_name.get(twin_name),
                        twin_name,
                        tags,
                        twin_source_of=self._source_of,
                    )
                    trigger = self._gap(slot, state)
                    if trigger is not None:
                        triggers.append(trigger)
        return triggers

    # ----------------------------------------------------------------------- helpers
    def _gap(self, slot: Slot, state: SlotState) -> Trigger | None:
        """A trigger when ``slot``'s twin lags behind, None when in sync or waiting for a change."""
        current = state.source_version
        with self._lock:
            changed = slot in self._seen and self._seen[slot] != current
            self._seen[slot] = current
            if changed:
                self._quiet.discard((slot, current))
            quiet = (slot, current) in self._quiet
        action, reason = explain(
            state, remove_on_delete=self.pipeline.config.remove_alias_on_delete
        )
        said = f"{action.value} because {reason}"
        with self._lock:  # every pass decides again: log a slot's decision when it changes
            changed_decision, self._said[slot] = self._said.get(slot) != said, said
        if changed_decision:
            _logger.info("%s (%s pass): %s", slot, self.event, said)
        if quiet or not action.needs_work:
            return None
        return Trigger(slot, self.event, current, explicit=changed)

    def _source_of(self, twin_name: str, version: str) -> str | None:
        """The source version a twin version was converted from (immutable, so cached)."""
        key = (twin_name, version)
        if key not in self._twin_source:
            mv = self.client.get_model_version(twin_name, version)
            self._twin_source[key] = mv.tags.get(tag_keys.SOURCE_VERSION)
        return self._twin_source[key]

    def _note(self, trigger: Trigger):
        def done(future: Future) -> None:
            outcome: Outcome = future.result()
            # a version that failed before, or a format the config does not trust: wait for a
            # change (a restart with a new config starts with nothing quiet)
            if outcome.result in ("skipped", "refused"):
                with self._lock:
                    self._quiet.add((trigger.slot, outcome.source_version))

        return done


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
        start_preload()
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
