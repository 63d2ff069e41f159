"""Every ``--model_args`` key of the ``softreason`` model: one dataclass, parsing, validation.

``SoftReasonConfig.from_model_args(**kwargs)`` is the only entry point. Values may arrive as
strings (``lm_eval --model_args k=v``) or typed (Python API); every key is checked, and an
unknown key or a bad value raises ``ValueError`` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, get_type_hints

from .answers import ANSWER_TYPES  # one list of answer types, shared with the parser
from .search.choices import ACQUISITIONS, SEARCHES  # one list each, shared with lm and bo
BASES = ("token", "zero")
SIGMA_SCALES = ("embedding_rms", "absolute")
SELECTS = ("vote", "vote_candidates", "weighted", "best")
VERIFIERS = ("attempts", "grouped")
DTYPES = ("auto", "float32", "bfloat16", "float16")
CPU_LINEARS = ("auto", "aten", "onednn")
BACKENDS = ("hf", "vllm")

# The fields that cannot change what ``generate_until`` returns for a request, and why. Every
# other field is part of the configuration fingerprint (``SoftReasonConfig.fingerprint``), so a
# field added later is fingerprinted unless it is listed here (tests/test_config.py checks both).
NOT_IN_FINGERPRINT = {
    "device": "where the model runs; the dtype it resolves to is fingerprinted, and device "
              "changes no setting, only float rounding (as another machine would)",
    "batch_size": "how many requests' searches run at once; each search is the same "
                  "(tests/test_lockstep.py: equal to one at a time)",
    "max_batch_size": "the cap of batch_size=auto",
    "threads": "how many CPU threads compute; like device, it changes only float rounding",
    "trace_dir": "where per-request traces are written",
    "tensor_parallel_size": "how many GPUs vLLM splits the model over; like device, only "
                            "float rounding",
    "gpu_memory_utilization": "how much GPU memory vLLM may take for weights and KV cache",
    "enforce_eager": "vLLM without CUDA graphs / torch.compile: the same kernels' arithmetic, "
                     "only start-up time and speed change",
}

# Keys added after results were recorded, with the value every earlier run implicitly had. At
# that value a key is left out of the fingerprint and of a cell's settings, so earlier caches
# and cells stay valid; any other value is hashed like every output-changing key.
ADDED_LATER = {"backend": "hf", "verifier_force_answer": False}

# The defaults a preset decides (model_args preset=...); a key given explicitly wins.
# v1: the package's first defaults (every cell committed before issue 18 ran with them).
# v2, v3: chosen on the development splits (results/dev/, README "Presets").
PRESETS: dict[str, dict[str, Any]] = {
    "v1": {"sigma": 1.0, "sigma_scale": "embedding_rms", "base": "token", "min_rounds": 2,
           "stop_threshold": 0.01, "select": "vote", "verifier": "attempts", "rescore": False,
           "min_spread": 0.0, "stop_unanimous": False, "verifier_force_answer": False,
           "w_verifier": 1.0},
    # sigma 8 embedding-RMS: the most distinct answers per round with every candidate parsable
    # on Qwen svamp_dev (results/dev/perturbation_*.md); absolute units are not model-robust
    "v2": {"sigma": 8.0, "sigma_scale": "embedding_rms", "base": "token", "min_rounds": 1,
           "stop_threshold": 0.01, "select": "vote", "verifier": "grouped", "rescore": True,
           "min_spread": 0.05, "stop_unanimous": True, "verifier_force_answer": False,
           "w_verifier": 1.0},
}
# v3: v2 without the verifier. On Qwen svamp_dev its verdicts were right less often than the
# plain vote of the candidates it read (results/dev/verifier_offline_*.md; 0.21 vs 0.53, 0.42
# with forced answers) and dropping it cost no accuracy at 15% fewer generated and 88% fewer
# prompt tokens (README "Presets"). Forcing stays on for anyone who sets w_verifier > 0.
PRESETS["v3"] = {**PRESETS["v2"], "w_verifier": 0.0, "verifier_force_answer": True}
DEFAULT_PRESET = "v3"

# Keys only Soft Reasoning (search=softreason|random) reads. The baselines' outputs cannot
# depend on them, so they are left out of a greedy or sc configuration's fingerprint and
# settings: a new default preset does not invalidate baseline caches and cells.
SEARCH_ONLY = ("preset", "k", "proj_dim", "sigma", "sigma_scale", "base", "box", "max_rounds",
               "min_rounds", "stop_threshold", "token_budget", "stop_unanimous", "w_verifier",
               "w_coherence", "verifier", "rescore", "min_spread", "acquisition", "select",
               "verifier_max_gen_toks", "verifier_force_answer")
SAMPLING_ONLY = ("n", "temperature")  # search=sc; greedy samples with the task's temperature


def relevant_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (a configuration as a dict) less the keys its ``search`` never reads:
    ``SEARCH_ONLY`` for the baselines, ``SAMPLING_ONLY`` too for greedy. Soft Reasoning keeps
    every key. Works on a recorded cell's settings as on a live configuration."""
    search = settings.get("search")
    drop: tuple[str, ...] = ()
    if search in ("greedy", "sc"):
        drop = SEARCH_ONLY + (SAMPLING_ONLY if search == "greedy" else ())
    return {k: v for k, v in settings.items() if k not in drop}


@dataclass
class SoftReasonConfig:
    """All settings of one ``softreason`` model instance (see README, "model_args")."""

    # --- model loading -------------------------------------------------------------------
    pretrained: str | None = None  # Hub id, local dir or .gguf file; None = embedded SmolLM2
    gguf_file: str | None = None  # GGUF file name inside the `pretrained` directory
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    max_length: int | None = None  # context window; default: the model config's
    batch_size: int | str = 1  # concurrent searches (cross-request batching); or "auto"
    max_batch_size: int | None = None
    seed: int = 1234
    # --- CPU execution (no effect on GPUs) ---------------------------------------------------
    # aten: torch's default linear (MKL sgemm, weights repacked at every call); onednn: weights
    # prepacked once for oneDNN (results/cpu_engine.md); auto: onednn for float32 on CPU
    cpu_linear: str = "auto"
    threads: int | str = "auto"  # torch intra-op threads; auto: the CPUs this process may use
    # --- decoding backend ------------------------------------------------------------------
    # hf: our transformers engine (engine.py); vllm: vLLM's (vllm_engine.py, optional extra)
    backend: str = "hf"
    tensor_parallel_size: int = 1  # vLLM only: GPUs per model
    gpu_memory_utilization: float | None = None  # vLLM only; None: vLLM's default
    # vLLM only: skip torch.compile and CUDA graphs (issue 19 measured 180-210 s of compiling
    # per start on 2-core CPUs; eager started in 37 s, results/backend_throughput.md)
    enforce_eager: bool = True
    # --- search ----------------------------------------------------------------------------
    # None below means "as the preset says" (PRESETS); the resolved value replaces it
    preset: str = DEFAULT_PRESET
    search: str = "softreason"
    k: int = 5  # candidates per round
    proj_dim: int = 50  # d, the search space dimension
    sigma: float | None = None  # per-coordinate std of the perturbation (in sigma_scale units)
    sigma_scale: str | None = None
    base: str | None = None
    box: float = 3.0  # search box [-box, box]^d for initial draws and acquisition alike
    max_rounds: int = 5
    min_rounds: int | None = None
    stop_threshold: float | None = None
    # cap on generated tokens (candidates + verifier); a round starts only if it should fit
    token_budget: int | None = None
    stop_unanimous: bool | None = None  # stop after round 1 when all k candidates agree
    w_verifier: float | None = None  # 0: no verifier call (v3); the reward is coherence
    w_coherence: float = 1.0
    verifier: str | None = None  # attempts (v1 prompt, any answer) | grouped (v2)
    rescore: bool | None = None  # re-score every candidate against the latest verdict
    min_spread: float | None = None  # reward spread below which the GP is not fitted
    acquisition: str = "logei"
    select: str | None = None
    answer_type: str = "auto"
    question_field: str = "question"
    verifier_max_gen_toks: int = 300
    # a verifier reply without an answer line is continued with "Answer:" (search/verifier.py)
    verifier_force_answer: bool | None = None
    max_gen_toks: int = 300  # default when the task's gen_kwargs give none
    # --- self-consistency (search=sc) and sampling ----------------------------------------
    n: int = 10
    temperature: float = 0.6
    top_p: float = 1.0
    # --- analysis ------------------------------------------------------------------------
    trace_dir: str | None = None

    @classmethod
    def from_model_args(cls, **kwargs: Any) -> "SoftReasonConfig":
        """Build and validate a config from ``--model_args`` keys (strings or typed values)."""
        hints = get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in kwargs.items():
            if key not in known:
                raise ValueError(
                    f"softreason: unknown model_args key {key!r} (value {raw!r}). "
                    f"Allowed keys: {', '.join(sorted(known))}"
                )
            values[key] = _coerce(key, raw, hints[key])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def __post_init__(self) -> None:
        """Fill every key left at None from the preset (explicit keys win)."""
        _choice("preset", self.preset, tuple(PRESETS))
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)

    def validate(self) -> None:
        """Raise ValueError naming the first bad value and what is allowed."""
        _choice("search", self.search, SEARCHES)
        _choice("acquisition", self.acquisition, ACQUISITIONS)
        _choice("base", self.base, BASES)
        _choice("sigma_scale", self.sigma_scale, SIGMA_SCALES)
        _choice("select", self.select, SELECTS)
        _choice("verifier", self.verifier, VERIFIERS)
        _choice("answer_type", self.answer_type, ANSWER_TYPES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("cpu_linear", self.cpu_linear, CPU_LINEARS)
        _choice("backend", self.backend, BACKENDS)
        if self.backend != "vllm":
            for key, default in (("tensor_parallel_size", 1), ("gpu_memory_utilization", None)):
                if getattr(self, key) != default:
                    raise ValueError(f"softreason: model_args {key}={getattr(self, key)!r} "
                                     "needs backend=vllm (the hf backend ignores it)")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"softreason: model_args tensor_parallel_size="
                             f"{self.tensor_parallel_size!r} must be >= 1")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"softreason: model_args gpu_memory_utilization="
                             f"{self.gpu_memory_utilization!r} must be in (0, 1]")
        if self.threads != "auto" and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"softreason: model_args threads={self.threads!r} must be an "
                             "integer >= 1 or auto")
        if not (self.device in ("auto", "cpu", "mps", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(
                f"softreason: model_args device={self.device!r} is not allowed; "
                "use auto, cpu, mps, cuda or cuda:N"
            )
        for name, low in (("k", 1), ("proj_dim", 1), ("max_rounds", 1), ("min_rounds", 1),
                          ("n", 1), ("verifier_max_gen_toks", 1),
                          ("max_gen_toks", 0)):
            if getattr(self, name) < low:
                raise ValueError(
                    f"softreason: model_args {name}={getattr(self, name)!r} must be >= {low}"
                )
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int)
                                          or self.batch_size < 1):
            raise ValueError(f"softreason: model_args batch_size={self.batch_size!r} must be "
                             "an integer >= 1 (concurrent searches) or auto")
        if self.min_rounds > self.max_rounds:
            raise ValueError(
                f"softreason: model_args min_rounds={self.min_rounds} must be <= "
                f"max_rounds={self.max_rounds}"
            )
        for name in ("sigma", "box", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"softreason: model_args {name}={getattr(self, name)!r} must be > 0"
                )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"softreason: model_args top_p={self.top_p!r} must be in (0, 1]")
        for name in ("w_verifier", "w_coherence", "stop_threshold", "min_spread"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"softreason: model_args {name}={getattr(self, name)!r} must be >= 0"
                )
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(
                f"softreason: model_args token_budget={self.token_budget!r} must be >= 1"
            )
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(
                f"softreason: model_args max_length={self.max_length!r} must be >= 2"
            )

    def fingerprint(self) -> str:
        """Short hash of every field that can change a response: all fields but
        ``NOT_IN_FINGERPRINT``. ``dtype=auto`` resolves per machine, so a caller that knows the
        resolved dtype fingerprints ``replace(cfg, dtype=<resolved>)`` (as ``SoftReasonLM``
        does); ``auto`` itself hashes as ``auto``."""
        kept = self.output_settings()
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]

    def output_settings(self) -> dict[str, Any]:
        """The fields that can change a response (``fingerprint`` hashes them): all but
        ``NOT_IN_FINGERPRINT``, ``ADDED_LATER`` keys only away from their original value, and
        only the keys this ``search`` reads (``relevant_settings``)."""
        return relevant_settings({k: v for k, v in asdict(self).items()
                                  if k not in NOT_IN_FINGERPRINT
                                  and not (k in ADDED_LATER and v == ADDED_LATER[k])})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"softreason: model_args {name}={value!r} is not allowed; choose one of "
            f"{', '.join(allowed)}"
        )


_NONE_STRINGS = ("", "none", "null")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _coerce(key: str, raw: Any, hint: Any) -> Any:
    """Convert a CLI string (or typed value) to the field's type, or raise naming the key."""
    text = str(raw)
    optional = "None" in str(hint)
    if raw is None or (optional and isinstance(raw, str) and text.lower() in _NONE_STRINGS):
        if optional:
            return None
        raise ValueError(f"softreason: model_args {key} needs a value, got {raw!r}")
    base = str(hint).replace(" | None", "").replace("Optional[", "").rstrip("]")
    if key == "batch_size" and text.startswith("auto"):
        return "auto"  # lm-eval's auto / auto:N: concurrent searches from free memory
    if key == "threads" and text == "auto":
        return "auto"
    try:
        if "bool" in base:
            if isinstance(raw, bool):
                return raw
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if "int" in base:
            value = float(text)
            if isinstance(raw, bool) or not value.is_integer():
                raise ValueError
            return int(value)
        if "float" in base:
            value = float(raw)
            if value != value:  # NaN
                raise ValueError
            return value
        return text
    except (TypeError, ValueError):
        kind = "true/false" if "bool" in base else "integer" if "int" in base else "number"
        raise ValueError(
            f"softreason: model_args {key}={raw!r} is not a valid {kind}"
        ) from None
