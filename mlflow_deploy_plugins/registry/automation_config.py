"""The promotion-automation config file (``--config PATH``, YAML or TOML), parsed and validated.

Which registered models to watch (names or glob patterns), which aliases and/or legacy stages
count as a promotion, how to convert, and optionally where to deploy. Every error names the key.
"""

from __future__ import annotations

import fnmatch
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.errors import InvalidInputError

#: What ``webhooks register`` subscribes to: the only registry events that are promotions.

DEFAULT_ALIASES = ("champion",)
DEFAULT_ONNX_NAME = "{model}-onnx"
DEFAULT_DEPLOYMENT_NAME = "{model}-{alias}"
DEFAULT_AUDIT_EXPERIMENT = "mlflow-deploy-automation"
VALID_STAGES = ("Staging", "Production", "Archived")
#: ``promote:`` keys and the type each must have (passed to ``promote()`` as keyword arguments).
PROMOTE_KEYS: dict[str, tuple[type, ...]] = {
    "atol": (int, float),
    "rtol": (int, float),
    "min_label_agreement": (int, float),
    "quantize": (bool,),
    "target_opset": (int,),
    "sample": (str,),
    "experiment_name": (str,),
}
_TEMPLATE_FIELDS = {"model", "alias", "onnx_model"}


@dataclass(frozen=True)
class DeploySpec:
    """Deploy the ONNX version to ``target`` as deployment ``name`` after a promotion."""

    target: str
    name: str = DEFAULT_DEPLOYMENT_NAME  # template: {model}, {alias} (or the stage), {onnx_model}
    config: dict[str, str] = field(default_factory=dict)  # the -C keys, as strings
    aliases: tuple[str, ...] | None = None  # promotions that deploy (None: every watched alias)
    stages: tuple[str, ...] | None = None

    def applies_to(self, kind: str, label: str) -> bool:
        chosen = self.aliases if kind == "alias" else self.stages
        if self.aliases is None and self.stages is None:
            return True
        return chosen is not None and label in chosen

    def deployment_name(self, model: str, label: str, onnx_model: str) -> str:
        return self.name.format(model=model, alias=label.lower(), onnx_model=onnx_model)


class SlotDeployment(NamedTuple):
    """One deployment a promotion makes: its spec, its name, the twin tag recording what it serves."""

    spec: DeploySpec
    name: str
    tag: str


@dataclass(frozen=True)
class ModelRule:
    """One ``models:`` entry: a name or glob pattern and what to do on its promotions."""

    pattern: str
    aliases: tuple[str, ...]
    stages: tuple[str, ...]
    onnx_name: str = DEFAULT_ONNX_NAME
    promote: dict[str, Any] = field(default_factory=dict)
    deploy: tuple[DeploySpec, ...] = ()
    #: Convert pickle/cloudpickle models of this rule (loading them runs code from the file).
    trust_pickle: bool = False
    #: The config key that set ``trust_pickle`` (named in refusals: what to change).
    trust_key: str = "trust_pickle"

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)

    def onnx_name_for(self, model: str) -> str:
        return self.onnx_name.format(model=model)

    def is_twin_name(self, name: str) -> bool:
        """True when ``name`` has the shape of a twin this rule would create (``x-onnx``)."""
        regex = re.escape(self.onnx_name).replace(re.escape("{model}"), ".+")
        return re.fullmatch(regex, name) is not None

    def watches(self, kind: str, label: str) -> bool:
        return label in (self.aliases if kind == "alias" else self.stages)

    def deployments_for(self, kind: str, label: str) -> tuple[DeploySpec, ...]:
        return tuple(d for d in self.deploy if d.applies_to(kind, label))

    def slot_deployments(self, model: str, kind: str, label: str) -> tuple[SlotDeployment, ...]:
        """The deployments of one slot of source ``model``, named, with their twin tag."""
        twin = self.onnx_name_for(model)
        out = []
        for spec in self.deployments_for(kind, label):
            name = spec.deployment_name(model, label, twin)
            out.append(SlotDeployment(spec, name, tag_keys.deployment_tag(spec.target, name)))
        return tuple(out)


@dataclass(frozen=True)
class AutomationConfig:
    """The whole config: rules are tried in order, the first whose pattern matches wins."""

    rules: tuple[ModelRule, ...]
    remove_alias_on_delete: bool = True
    audit_experiment: str = DEFAULT_AUDIT_EXPERIMENT
    trust_pickle: bool = False

    def check_scope(self) -> AutomationConfig:
        """Refuse a config that names no model: the scope is an explicit list (``"*"`` too)."""
        if not self.rules:
            raise InvalidInputError(
                "The automation watches no model: list them under 'models:' in the config file "
                "or pass --model NAME (repeatable, glob patterns allowed); '*' (quoted) watches "
                "every registered model and has to be written out"
            )
        return self

    def rule_for(self, name: str) -> ModelRule | None:
        """The rule for source model ``name``; None when not configured or when it is a twin."""
        for rule in self.rules:
            if rule.matches(name):
                return None if rule.is_twin_name(name) else rule
        return None

    def is_twin(self, name: str) -> bool:
        """True when ``name`` has the shape of an ONNX twin of some rule (``churn-onnx``)."""
        return any(rule.is_twin_name(name) for rule in self.rules)

    def with_overrides(
        self,
        models: Iterable[str] = (),
        aliases: Iterable[str] = (),
        stages: Iterable[str] = (),
    ) -> AutomationConfig:
        """Command-line ``--model`` / ``--alias`` / ``--stage``, when given, replace the config's."""
        aliases, stages, models = tuple(aliases), tuple(stages), tuple(models)
        for i, stage in enumerate(stages):
            _check_stage(stage, f"--stage[{i}]")
        rules = self.rules
        if models:
            base = rules[0] if rules else ModelRule("*", DEFAULT_ALIASES, ())
            rules = tuple(replace(base, pattern=m) for m in models)
        if aliases:
            rules = tuple(replace(r, aliases=aliases) for r in rules)
        if stages:
            rules = tuple(replace(r, stages=stages) for r in rules)
        return replace(self, rules=rules)


def default_config() -> AutomationConfig:
    """No config file: no model yet (``--model`` names them), alias ``champion``, no pickle."""
    return AutomationConfig(())


def load_config(path: str | Path | None) -> AutomationConfig:
    """Read ``path`` (``.yaml``/``.yml`` or ``.toml``); None gives :func:`default_config`."""
    if path is None:
        return default_config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInputError(f"Cannot read automation config {path}: {e}") from e
    if path.suffix.lower() == ".toml":
        data = _parse_toml(text, path)
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InvalidInputError(f"{path}: not valid YAML: {e}") from e
    return parse_config({} if data is None else data, source=str(path))


def parse_config(data: Any, source: str = "config") -> AutomationConfig:
    """Validate a mapping (already parsed from YAML/TOML); errors name ``source`` and the key."""
    where = f"{source}: "
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"{where}the top level must be a mapping")
    _reject_unknown(
        data,
        {
            "models",
            "aliases",
            "stages",
            "remove_alias_on_delete",
            "audit_experiment",
            "trust_pickle",
        },
        "",
        where,
    )
    aliases = _names(data.get("aliases", list(DEFAULT_ALIASES)), "aliases", where)
    stages = _stages(data.get("stages", []), "stages", where)
    remove = data.get("remove_alias_on_delete", True)
    if not isinstance(remove, bool):
        raise InvalidInputError(f"{where}remove_alias_on_delete: must be true or false")
    audit = data.get("audit_experiment", DEFAULT_AUDIT_EXPERIMENT)
    if not isinstance(audit, str) or not audit.strip():
        raise InvalidInputError(f"{where}audit_experiment: must be a non-empty string")
    trust = _flag(data, "trust_pickle", False, "trust_pickle", where)
    if "models" not in data:
        raise InvalidInputError(
            f"{where}models: required: the list of registered models (names or glob patterns) "
            "the automation may convert; write '*' (quoted) to mean every model"
        )
    models = data["models"]
    if not isinstance(models, list) or not models:
        raise InvalidInputError(f"{where}models: must be a non-empty list of names or mappings")
    rules = tuple(
        _rule(entry, f"models[{i}]", aliases, stages, where, trust)
        for i, entry in enumerate(models)
    )
    return AutomationConfig(rules, remove, audit, trust)


# --------------------------------------------------------------------------- helpers
def _parse_toml(text: str, path: Path) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError as e:
            raise InvalidInputError(
                f"{path}: reading TOML on Python 3.10 needs 'tomli' (pip install tomli), "
                "or use a YAML file"
            ) from e
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInputError(f"{path}: not valid TOML: {e}") from e


def _flag(mapping: Mapping, name: str, default: bool, key: str, where: str) -> bool:
    value = mapping.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInputError(f"{where}{key}: must be true or false, got {value!r}")
    return value


def _rule(entry, key, default_aliases, default_stages, where, trust_default=False) -> ModelRule:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping):
        raise InvalidInputError(f"{where}{key}: must be a model name or a mapping with 'name'")
    _reject_unknown(
        entry,
        {"name", "aliases", "stages", "onnx_name", "promote", "deploy", "trust_pickle"},
        key,
        where,
    )
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"{where}{key}.name: must be a model name or glob pattern")
    aliases = _names(entry.get("aliases", list(default_aliases)), f"{key}.aliases", where)
    stages = _stages(entry.get("stages", list(default_stages)), f"{key}.stages", where)
    if not aliases and not stages:
        raise InvalidInputError(f"{where}{key}: needs at least one alias or stage to watch")
    onnx_name = entry.get("onnx_name", DEFAULT_ONNX_NAME)
    if not isinstance(onnx_name, str) or "{model}" not in onnx_name:
        raise InvalidInputError(
            f"{where}{key}.onnx_name: must be a template containing {{model}}, e.g. '{{model}}-onnx'"
        )
    _check_template(onnx_name, {"model"}, f"{key}.onnx_name", where)
    promote = _promote(entry.get("promote", {}), f"{key}.promote", where)
    deploy = entry.get("deploy", [])
    if isinstance(deploy, Mapping):
        deploy = [deploy]
    if not isinstance(deploy, list):
        raise InvalidInputError(f"{where}{key}.deploy: must be a mapping or a list of mappings")
    specs = tuple(_deploy(d, f"{key}.deploy[{i}]", where) for i, d in enumerate(deploy))
    own = "trust_pickle" in entry
    trust = _flag(entry, "trust_pickle", trust_default, f"{key}.trust_pickle", where)
    trust_key = f"{key}.trust_pickle" if own else "trust_pickle"
    return ModelRule(name.strip(), aliases, stages, onnx_name, promote, specs, trust, trust_key)


def _promote(value, key, where) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{where}{key}: must be a mapping")
    _reject_unknown(value, set(PROMOTE_KEYS), key, where)
    out = {}
    for k, v in value.items():
        types = PROMOTE_KEYS[k]
        if isinstance(v, bool) and bool not in types or not isinstance(v, types):
            wanted = " or ".join(t.__name__ for t in types)
            raise InvalidInputError(f"{where}{key}.{k}: must be {wanted}, got {v!r}")
        out[k] = v
    return out


def _deploy(value, key, where) -> DeploySpec:
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{where}{key}: must be a mapping with 'target'")
    _reject_unknown(value, {"target", "name", "config", "aliases", "stages"}, key, where)
    target = value.get("target")
    if not isinstance(target, str) or not target.strip():
        raise InvalidInputError(
            f"{where}{key}.target: must name a deployment target, e.g. onnx-docker"
        )
    name = value.get("name", DEFAULT_DEPLOYMENT_NAME)
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"{where}{key}.name: must be a non-empty string (a template)")
    _check_template(name, _TEMPLATE_FIELDS, f"{key}.name", where)
    config = value.get("config", {})
    if not isinstance(config, Mapping):
        raise InvalidInputError(f"{where}{key}.config: must be a mapping of -C keys to values")
    strings = {}
    for k, v in config.items():
        if isinstance(v, Mapping | list) or v is None:
            raise InvalidInputError(f"{where}{key}.config.{k}: must be a string, number or boolean")
        strings[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)  # -C gives strings
    aliases = value.get("aliases")
    stages = value.get("stages")
    return DeploySpec(
        target.strip(),
        name.strip(),
        strings,
        None if aliases is None else _names(aliases, f"{key}.aliases", where),
        None if stages is None else _stages(stages, f"{key}.stages", where),
    )


def _names(value, key, where) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InvalidInputError(f"{where}{key}: must be a list of names")
    for v in value:
        if v.lower() == "latest" or re.fullmatch(r"[vV]\d+", v):
            raise InvalidInputError(
                f"{where}{key}: alias {v!r} is reserved by MLflow ('latest', 'v<number>')"
            )
    return tuple(v.strip() for v in value)


def _stages(value, key, where) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InvalidInputError(f"{where}{key}: must be a list of stages {VALID_STAGES}")
    for i, v in enumerate(value):
        _check_stage(v, f"{where}{key}[{i}]")
    return tuple(value)


def _check_stage(value, key) -> None:
    if value not in VALID_STAGES:
        raise InvalidInputError(f"{key}: stage must be one of {VALID_STAGES}, got {value!r}")


def _check_template(value: str, allowed: set[str], key: str, where: str) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as e:
        raise InvalidInputError(f"{where}{key}: invalid template {value!r}: {e}") from e
    unknown = fields - allowed
    if unknown:
        raise InvalidInputError(
            f"{where}{key}: unknown placeholder(s) {sorted(unknown)} in {value!r}; "
            f"allowed: {sorted('{' + a + '}' for a in allowed)}"
        )


def _reject_unknown(mapping: Mapping, allowed: set[str], key: str, where: str) -> None:
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        prefix = f"{key}." if key else ""
        raise InvalidInputError(
            f"{where}{prefix}{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}"
        )
