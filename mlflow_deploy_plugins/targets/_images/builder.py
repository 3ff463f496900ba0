"""The image builder: build context, streamed docker-SDK build, and a content-hash tag, so an
unchanged bundle reuses its image."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow_deploy_plugins.targets import _deployments, _docker
from mlflow_deploy_plugins.targets._images import package, probe, wheels
from mlflow_deploy_plugins.targets._images.recipes import Recipe

_logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


class ImageBuildError(_deployments.DeploymentError):
    """``docker build`` failed; ``logs`` holds its last output lines."""


@dataclass(frozen=True)
class BuiltImage:
    """A serving image, built now or reused (``cached``)."""

    tag: str
    id: str
    size: int
    base_size: int
    cached: bool
    seconds: float
    #: The recipe's build stage, built and tagged on its own (``None`` when reused or absent).
    stage_tag: str | None = None

    @property
    def added_mb(self) -> float:
        """Megabytes the image adds over its base."""
        return (self.size - self.base_size) / 1e6


def default_repository(served_name: str) -> str:
    """``mlflow-deploy/<served name as a repository slug>``."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", served_name.lower()).strip("-._") or "model"
    return f"mlflow-deploy/{slug}"


def ensure_image_for(
    client,
    resolved: _deployments.ResolvedModel,
    cfg,
    *,
    recipe: Recipe,
    repository: str | None,
    progress: Progress,
) -> BuiltImage:
    """:func:`ensure_image` with the build keys every image-building target config has
    (``base_image``, ``python_version``, ``platform``, ``wheel_cache``, ``rebuild``)."""
    return ensure_image(
        client,
        resolved,
        recipe=recipe,
        base_image=cfg.base_image,
        repository=repository,
        python_version=cfg.python_version,
        platform=cfg.platform,
        cache_dir=cfg.wheel_cache,
        rebuild=cfg.rebuild,
        progress=progress,
    )


def ensure_image(
    client,
    resolved: _deployments.ResolvedModel,
    *,
    recipe: Recipe,
    base_image: str,
    repository: str | None = None,
    python_version: str | None = None,
    platform: str | None = None,
    cache_dir: str | None = None,
    rebuild: bool = False,
    nocache: bool = False,
    progress: Progress = _logger.info,
) -> BuiltImage:
    """The serving image of ``resolved`` made by ``recipe``: reused when one with the same
    content hash exists, else built (progress streamed as ``step n/m``).

    The hash covers everything that goes in: the recipe's template version and Dockerfile, the
    base image id, the lock, the platform, this package's files, the bundle minus its timestamp.

    Args:
        client: a docker SDK client.
        resolved: the model (its serving bundle goes into ``bundle/``).
        recipe: the kind of image (e.g. ``recipes.ONNX_SERVING``).
        base_image: the image the recipe builds FROM (pulled when missing).
        repository: the image repository; default :func:`default_repository`.
        python_version: skips probing the base image's Python.
        platform: skips probing the base image's pip platform tag.
        cache_dir: the wheel cache root; default ``wheels.default_cache_dir()``.
        rebuild: build even when the content hash exists.
        nocache: also skip Docker's layer cache (benchmarks).
        progress: receives one line per step.

    Returns:
        The image.

    Raises:
        InvalidInputError: the base image is unusable (see ``probe.probe_platform``).
        ImageBuildError: the build failed (its last output lines in ``logs``).
    """
    started = time.monotonic()
    cache_dir = cache_dir or wheels.default_cache_dir()
    base = _docker.ensure_base_image(client, base_image, progress)
    target = probe.probe_platform(client, base, python_version=python_version, platform=platform)
    lock = wheels.runtime_lock(target, recipe.runtime_extra)
    wheel = package.package_wheel(cache_dir, progress)
    labels = recipe.labels(resolved, base_image)
    dockerfile = recipe.dockerfile(base_image, os.path.basename(wheel), labels)
    manifest = {k: v for k, v in resolved.bundle.manifest.raw.items() if k != "created_at"}
    content = wheels.content_digest(
        recipe.template_version,
        dockerfile,
        base.id,
        lock,
        target.python_version,
        target.platform_tags,
        package.package_hash(),
        manifest,
    )
    tag = f"{repository or default_repository(resolved.served_name)}:{content[:20]}"
    base_size = int(base.attrs.get("Size") or 0)
    if not rebuild:
        existing = _docker.get_image(client, tag)
        if existing is not None:
            built = BuiltImage(tag, existing.id, int(existing.attrs["Size"]), base_size, True, 0.0)
            progress(
                f"Image {tag}: unchanged bundle, reusing it "
                f"({built.size / 1e6:.0f} MB, +{built.added_mb:.0f} MB over the base)"
            )
            return built
    runtime_wheels = wheels.download_wheels(lock, target, cache_dir, progress)
    # The hash and the build time are labels of the built image only, not inputs of the hash.
    labels[_deployments.LABEL_CONTENT_HASH] = content
    labels["org.opencontainers.image.created"] = datetime.now(timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    dockerfile = recipe.dockerfile(base_image, os.path.basename(wheel), labels)
    with tempfile.TemporaryDirectory(prefix="mlflow-deploy-build-") as context:
        _link_tree(runtime_wheels, os.path.join(context, "wheels"))
        _link_tree(os.path.dirname(wheel), os.path.join(context, "package"), [wheel])
        _link_tree(resolved.bundle.path, os.path.join(context, "bundle"))
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write(dockerfile)
        stage_tag = None
        if recipe.build_stage:
            # Built and tagged on its own, the build stage is reused explicitly (by the next
            # model on the same runtime, through Docker's cache) instead of being left behind
            # as an untagged image after each build.
            stage = dockerfile.split(f"\nFROM {base_image}\n")[0]
            stage_digest = wheels.content_digest(stage, base.id, lock, package.package_hash())
            repo = repository or default_repository(resolved.served_name)
            stage_tag = f"{repo}:{recipe.build_stage}-{stage_digest[:20]}"
            progress(f"Build stage {stage_tag}")
            build(client, context, stage_tag, progress, nocache=nocache, target=recipe.build_stage)
        progress(f"Image {tag}")
        image_id = build(client, context, tag, progress, nocache=nocache)
    image = client.images.get(image_id)
    built = BuiltImage(
        tag,
        image.id,
        int(image.attrs["Size"]),
        base_size,
        False,
        time.monotonic() - started,
        stage_tag,
    )
    progress(
        f"Image {tag} built in {built.seconds:.1f} s: {built.size / 1e6:.0f} MB "
        f"(+{built.added_mb:.0f} MB over the base {base_image}, {base_size / 1e6:.0f} MB)"
    )
    return built


def build(
    client,
    context: str,
    tag: str,
    progress: Progress,
    *,
    nocache: bool = False,
    target: str | None = None,
) -> str:
    """``docker build`` of ``context`` through the SDK, with no network inside.

    Args:
        client: a docker SDK client.
        context: the build context directory (with its ``Dockerfile``).
        tag: the tag of the image.
        progress: receives ``step n/m`` lines.
        nocache: skip Docker's layer cache.
        target: build only up to this stage of a multi-stage Dockerfile.

    Returns:
        The image id.

    Raises:
        ImageBuildError: the build failed; ``logs`` holds its last output lines.
    """
    import docker.errors

    tail: list[str] = []
    image_id = None
    try:
        stream = client.api.build(
            path=context,
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            nocache=nocache,
            network_mode="none",
            target=target,
        )
        for chunk in stream:
            if "error" in chunk:
                tail.append(str(chunk["error"]).strip())
                raise ImageBuildError(f"Building image {tag} failed", logs="\n".join(tail[-25:]))
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            for line in str(chunk.get("stream", "")).splitlines():
                line = line.rstrip()
                if not line:
                    continue
                tail.append(line)
                del tail[:-50]
                step = _STEP.match(line)
                if step:
                    n, m, instruction = step.groups()
                    progress(f"  step {n}/{m}: {_shorten(instruction)}")
                elif "Using cache" in line:
                    progress("    (cached)")
    except docker.errors.APIError as e:
        raise ImageBuildError(
            f"Building image {tag} failed: {e.explanation or e}", logs="\n".join(tail[-25:])
        ) from e
    if image_id is None:
        image_id = client.images.get(tag).id
    return image_id


def _link_tree(src: str, dst: str, only: Iterable[str] | None = None) -> None:
    """Hard-link (else copy) files into the build context: the wheels are large."""
    os.makedirs(dst, exist_ok=True)
    paths = list(only) if only is not None else [os.path.join(src, n) for n in os.listdir(src)]
    for path in paths:
        if not os.path.isfile(path):
            continue
        target = os.path.join(dst, os.path.basename(path))
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _shorten(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
