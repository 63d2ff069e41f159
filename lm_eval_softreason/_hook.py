"""Start-up registration only: makes the stock ``lm_eval`` CLI see ``--model softreason`` and
our ``tasks/``. Imports nothing heavy.

lm-eval 0.4.13 has no plugin discovery, so ``lm_eval_softreason.pth`` (installed into
site-packages) imports this module at interpreter start. It adds one meta-path finder that
waits for ``lm_eval.api.registry`` / ``lm_eval.tasks.manager`` to be imported and then patches
them: ``get_model`` loads lm-eval's builtin models first and then registers ``softreason`` as a
lazy placeholder (registering earlier would hide the builtins: lm-eval only loads them into an
empty registry), and ``TaskManager`` gets our tasks directory placed after lm-eval's builtins
and before any user ``--include_path`` (so a user's tasks win over ours). Where lm-eval itself
offers plugin loading (``registry.load_plugins``), this steps aside and the entry points in
pyproject.toml take over. ``LM_EVAL_SOFTREASON_NO_HOOK=1`` turns it off.
"""

import os
import sys

MODEL_NAME = "softreason"
MODEL_TARGET = "lm_eval_softreason.lm:SoftReasonLM"


def tasks_dir() -> str:
    """Our task YAMLs: inside the package in a wheel, next to it in a source checkout."""
    here = os.path.dirname(os.path.realpath(__file__))
    packaged = os.path.join(here, "tasks")
    return packaged if os.path.isdir(packaged) else os.path.join(os.path.dirname(here), "tasks")


def register_model(registry) -> None:
    """Load lm-eval's builtin models, then add ours (idempotent)."""
    import lm_eval.models  # noqa: F401  (fills the registry with the builtins first)

    if MODEL_NAME not in registry.model_registry:
        registry.model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def _patch_registry(registry) -> None:
    if hasattr(registry, "load_plugins"):  # lm-eval discovers entry points itself
        return
    original = registry.get_model

    def get_model(model_name):
        register_model(registry)
        return original(model_name)

    get_model.__doc__ = original.__doc__
    registry.get_model = get_model


def _patch_task_manager(manager) -> None:
    if hasattr(manager, "discover_plugin_task_paths"):
        return
    cls = manager.TaskManager
    original = cls.__init__

    def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None,
                 *args, **kwargs):
        if include_path is None:
            paths = []
        elif isinstance(include_path, (list, tuple)):
            paths = list(include_path)
        else:
            paths = [include_path]
        ours = tasks_dir()
        if os.path.isdir(ours) and ours not in [os.path.realpath(p) for p in paths]:
            paths.insert(0, ours)  # after builtins, before the user's own paths
        original(self, verbosity, paths or None, include_defaults, metadata, *args, **kwargs)

    __init__.__doc__ = original.__doc__
    cls.__init__ = __init__


_PATCHES = {"lm_eval.api.registry": _patch_registry, "lm_eval.tasks.manager": _patch_task_manager}


class _PostImportFinder:
    """Finds nothing itself; wraps the real loader of the two lm-eval modules we patch."""

    def find_spec(self, name, path=None, target=None):
        patch = _PATCHES.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_then_patch
        return spec


def install() -> None:
    """Patch now if lm-eval is already imported, else when it is (idempotent)."""
    if any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        return
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _PostImportFinder())


if os.environ.get("LM_EVAL_SOFTREASON_NO_HOOK", "") not in ("1", "true", "True"):
    install()
