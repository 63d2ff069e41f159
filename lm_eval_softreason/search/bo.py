"""Batch Bayesian optimisation step: (points, rewards) in, the next ``q`` points out.

The only module of the package that imports BoTorch / GPyTorch. It knows nothing about
language models: a point is a row of a ``n x d`` tensor in the box ``[-box, box]^d`` and a
reward is a float (higher is better, ``NaN`` for "no reward").

Design, sized for ``n <= ~25`` points, ``d = 50`` and ``q = 5`` on two CPU cores (one call
must stay well under a second):

* Model: ``SingleTaskGP`` with an *isotropic* Matern-5/2 kernel (one length-scale, not 50:
  25 points cannot identify 50 ARD length-scales; three hyperparameters fit in ~0.1 s), inputs
  normalised with the fixed box bounds (never the data's own range), outcomes
  standardised. Length-scale prior: the dimension-scaled LogNormal of Hvarfner et al. (2024,
  BoTorch's default for ARD kernels) applied to the single length-scale; its mode (~1.45
  for d = 50) sits at the typical distance between two N(0, I) points in the normalised
  box (~1.67), so the GP starts neither flat nor spiky. Noise prior: BoTorch's
  LogNormal(-4, 1) on the standardised scale. The MLL fit is capped at ``FIT_MAXITER``
  L-BFGS iterations and starts from the prior modes.
* Acquisition: maximised over a discrete candidate pool (sequential greedy for ``q > 1``
  via ``optimize_acqf_discrete``) instead of multi-start gradient ascent over ``q * d``
  dimensions. The pool mixes three sources so it is neither blind nor myopic: Sobol points
  over the whole box, N(0, I) draws (the distribution the first round comes from), and
  Gaussian perturbations of the best points so far at step sizes tied to the fitted
  length-scale (where the GP's posterior actually says something). The pool is screened
  with one-point acquisition values and the q-batch is picked greedily (conditioning on the
  points already picked) from the ``SHORTLIST`` best: the q-point joint posteriors are the
  expensive part and only matter near the top.
* Torch runs single-threaded inside ``propose`` (restored on exit): at this size extra
  intra-op threads only contend, measured ~10x slower with 2 threads while another process
  held one of the 2 cores.

Measured on 2 busy CPU cores, n = 25, d = 50, q = 5: ~0.2-0.4 s per call.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.acquisition.monte_carlo import qProbabilityOfImprovement, qUpperConfidenceBound
from botorch.exceptions.warnings import BotorchWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import get_gaussian_likelihood_with_lognormal_prior
from botorch.optim import optimize_acqf_discrete
from botorch.sampling import SobolQMCNormalSampler
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import MaternKernel
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import LogNormalPrior
from torch import Tensor
from torch.quasirandom import SobolEngine

from .choices import ACQUISITIONS  # the one list, shared with config

FIT_MAXITER = 75
"""L-BFGS iteration cap for the marginal-likelihood fit (3 hyperparameters: plenty)."""
POOL_SOBOL = 128
"""Space-filling candidates over the whole box."""
POOL_PRIOR = 384
"""Candidates drawn like the first round: N(0, I) clamped to the box."""
POOL_LOCAL = 1536
"""Perturbations of the best points so far."""
LOCAL_CENTRES = 3
"""How many of the best points get perturbed."""
LOCAL_STEPS = (0.1, 0.25, 0.5, 1.0)
"""Perturbation lengths, as fractions of the fitted length-scale (Euclidean, normalised)."""
SHORTLIST = 256
"""Best pool points (by one-point acquisition value) kept for the sequential q-batch pick."""
MC_SAMPLES = 128
"""Quasi-MC samples for the q-batch acquisition values."""
UCB_BETA = 2.0
"""Exploration weight of qUCB (BoTorch's convention: mean + sqrt(beta * pi / 2) * |dev|)."""
PI_MARGIN = 0.5
"""PI counts improvements over the best reward by at least this many reward stds."""


@dataclass
class Proposal:
    """The next batch of points and how it was obtained.

    Attributes:
        x: ``q x d`` points in the raw box ``[-box, box]^d``, dtype of ``train_x``.
        fallback: ``None`` when the GP chose the points; otherwise why random points were
            returned instead: ``"too_few_points"``, ``"nan_rewards"``,
            ``"constant_rewards"``, ``"flat_rewards"``, ``"duplicate_points"``, ``"fit_failed"`` or
            ``"acqf_failed"``. Always ``None`` for ``acquisition="random"``.
        fit_s: Seconds spent fitting the GP (0 when not fitted).
        acqf_s: Seconds spent building the pool and maximising the acquisition.
    """

    x: Tensor
    fallback: str | None
    fit_s: float = 0.0
    acqf_s: float = 0.0


def random_points(
    q: int, d: int, box: float, seed: int, dtype: torch.dtype = torch.float64
) -> Tensor:
    """``q x d`` draws from N(0, I) clamped to ``[-box, box]``; depends only on ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(q, d, generator=generator, dtype=dtype).clamp(-box, box)


def propose(
    train_x: Tensor,
    train_y: Tensor,
    q: int,
    *,
    acquisition: str = "logei",
    box: float = 3.0,
    seed: int,
    min_spread: float = 0.0,
) -> Proposal:
    """Propose the next ``q`` points to evaluate.

    Args:
        train_x: ``n x d`` points evaluated so far (raw box coordinates).
        train_y: ``n`` rewards, higher is better; non-finite entries are ignored.
        q: Number of points to return.
        acquisition: One of ``"logei"`` (qLogExpectedImprovement), ``"ucb"``
            (qUpperConfidenceBound, beta = ``UCB_BETA``), ``"pi"``
            (qProbabilityOfImprovement over the best reward + ``PI_MARGIN`` stds) or
            ``"random"`` (no GP: ``random_points``).
        box: Half-width of the search box ``[-box, box]^d``; also the fixed bounds of the
            GP's input normalisation.
        seed: Makes the result deterministic. The global torch RNG is forked, not
            touched.
        min_spread: When the rewards span less than this (raw units), return random points
            (``fallback="flat_rewards"``). Outcome standardisation would otherwise blow a
            spread of pure noise (Soft Reasoning's coherence differences of ~0.006 among
            candidates that all agree) up to unit variance, and the GP would fit it as signal.

    Returns:
        A ``Proposal`` with ``x`` of shape ``q x d``. Degenerate data (fewer than two
        usable points, all rewards equal or within ``min_spread``, all points identical) or a
        failing fit /
        acquisition step give random points with ``fallback`` saying why; they never
        raise.
    """
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition={acquisition!r}; allowed: {', '.join(ACQUISITIONS)}")
    if train_x.dim() != 2:
        raise ValueError(f"train_x must be n x d, got shape {tuple(train_x.shape)}")
    if train_y.shape != (train_x.shape[0],):
        raise ValueError(
            f"train_y must have shape ({train_x.shape[0]},) to match train_x, "
            f"got {tuple(train_y.shape)}"
        )
    if q < 1:
        raise ValueError(f"q={q}; must be >= 1")
    if not box > 0:
        raise ValueError(f"box={box}; must be > 0")
    if not min_spread >= 0:
        raise ValueError(f"min_spread={min_spread}; must be >= 0")

    d = train_x.shape[1]
    out_dtype = train_x.dtype if train_x.dtype.is_floating_point else torch.float64

    def fallback(reason: str | None, fit_s: float = 0.0, acqf_s: float = 0.0) -> Proposal:
        x = random_points(q, d, box, seed, dtype=out_dtype).to(train_x.device)
        return Proposal(x=x, fallback=reason, fit_s=fit_s, acqf_s=acqf_s)

    if acquisition == "random":
        return fallback(None)

    # Work in float64 on the CPU: tiny problem, and GP fits are fragile in float32.
    x = train_x.detach().to("cpu", torch.float64).clamp(-box, box)
    y = train_y.detach().to("cpu", torch.float64)
    finite = torch.isfinite(y)
    x, y = x[finite], y[finite]
    if y.numel() < 2:
        return fallback("nan_rewards" if not bool(finite.all()) else "too_few_points")
    spread = float(y.max() - y.min())
    if spread <= 1e-9 * max(1.0, float(y.abs().max())):
        return fallback("constant_rewards")
    if spread < min_spread:
        return fallback("flat_rewards")
    if torch.unique(x, dim=0).shape[0] < 2:
        return fallback("duplicate_points")

    with _one_thread(), torch.random.fork_rng(), warnings.catch_warnings():
        # BoTorch warns about non-converged fits and duplicate inputs; both are expected
        # and handled here (iteration cap; the noise term absorbs duplicates).
        warnings.simplefilter("ignore", BotorchWarning)
        torch.manual_seed(seed)
        start = time.perf_counter()
        try:
            model = _fit_gp(x, y, box)
        except Exception:  # noqa: BLE001 - any fitting failure means "use random points"
            return fallback("fit_failed", fit_s=time.perf_counter() - start)
        fit_s = time.perf_counter() - start

        start = time.perf_counter()
        try:
            candidates = _maximise_on_pool(model, x, y, q, acquisition, box, seed)
        except Exception:  # noqa: BLE001
            return fallback("acqf_failed", fit_s=fit_s, acqf_s=time.perf_counter() - start)
        acqf_s = time.perf_counter() - start
    if not bool(torch.isfinite(candidates).all()):
        return fallback("acqf_failed", fit_s=fit_s, acqf_s=acqf_s)
    return Proposal(
        x=candidates.to(train_x.device, out_dtype), fallback=None, fit_s=fit_s, acqf_s=acqf_s
    )


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded, then restore the caller's thread count.

    The matrices here are at most a few thousand x 25: extra intra-op threads only add
    contention (measured ~10x slower with 2 threads while another process held a core).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit_gp(x: Tensor, y: Tensor, box: float) -> SingleTaskGP:
    """Fit an isotropic Matern-5/2 GP to ``n x d`` raw points and ``n`` rewards.

    Raises whatever the fit raises, and ``RuntimeError`` on non-finite hyperparameters.
    """
    d = x.shape[-1]
    lengthscale_prior = LogNormalPrior(loc=math.sqrt(2) + 0.5 * math.log(d), scale=math.sqrt(3))
    kernel = MaternKernel(
        nu=2.5,
        ard_num_dims=None,
        lengthscale_prior=lengthscale_prior,
        lengthscale_constraint=GreaterThan(
            2.5e-2, transform=None, initial_value=lengthscale_prior.mode
        ),
    )
    bounds = torch.tensor([[-box] * d, [box] * d], dtype=x.dtype)
    model = SingleTaskGP(
        x,
        y.unsqueeze(-1),
        covar_module=kernel,
        likelihood=get_gaussian_likelihood_with_lognormal_prior(),
        input_transform=Normalize(d=d, bounds=bounds),
        outcome_transform=Standardize(m=1),
    )
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": FIT_MAXITER}})
    hyper = torch.cat([p.detach().flatten() for p in model.parameters()])
    if not bool(torch.isfinite(hyper).all()):
        raise RuntimeError("GP fit gave non-finite hyperparameters")
    model.eval()
    return model


def _candidate_pool(
    model: SingleTaskGP, x: Tensor, y: Tensor, box: float, seed: int
) -> Tensor:
    """``POOL_SOBOL + POOL_PRIOR + POOL_LOCAL`` x ``d`` candidates in the raw box."""
    d = x.shape[-1]
    generator = torch.Generator().manual_seed(seed + 1)
    sobol = torch.empty(0, d, dtype=x.dtype)
    if POOL_SOBOL:
        sobol = SobolEngine(d, scramble=True, seed=seed).draw(POOL_SOBOL).to(x.dtype)
        sobol = (2 * sobol - 1) * box
    prior = torch.randn(POOL_PRIOR, d, generator=generator, dtype=x.dtype)

    # Step lengths in raw units: a Euclidean step of ``s * lengthscale`` in the normalised
    # unit box is ``s * lengthscale * 2 * box`` raw, spread over d dimensions.
    lengthscale = float(model.covar_module.lengthscale.detach().squeeze())
    steps = torch.tensor(LOCAL_STEPS, dtype=x.dtype) * lengthscale * 2 * box / math.sqrt(d)
    centres = x[torch.argsort(y, descending=True)[:LOCAL_CENTRES]]
    centre_idx = torch.arange(POOL_LOCAL) % centres.shape[0]
    step_idx = torch.arange(POOL_LOCAL) % len(LOCAL_STEPS)
    noise = torch.randn(POOL_LOCAL, d, generator=generator, dtype=x.dtype)
    local = centres[centre_idx] + steps[step_idx].unsqueeze(-1) * noise
    return torch.cat([sobol, prior, local]).clamp(-box, box)


def _maximise_on_pool(
    model: SingleTaskGP, x: Tensor, y: Tensor, q: int, acquisition: str, box: float, seed: int
) -> Tensor:
    """Greedy sequential maximisation of the acquisition over the pool; ``q x d``.

    ``best_f`` is the best observed reward (the raw scale: the model untransforms its
    outcome standardisation).
    """
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]), seed=seed)
    best_f = y.max()
    if acquisition == "logei":
        acqf = qLogExpectedImprovement(model, best_f=best_f, sampler=sampler)
    elif acquisition == "ucb":
        acqf = qUpperConfidenceBound(model, beta=UCB_BETA, sampler=sampler)
    else:
        # Plain PI (margin 0) piles the batch onto tiny steps around the incumbent.
        margin = PI_MARGIN * y.std()
        acqf = qProbabilityOfImprovement(model, best_f=best_f + margin, sampler=sampler)
    pool = _candidate_pool(model, x, y, box, seed)
    # Screen the pool with one-point values, then condition sequentially on the shortlist
    # only: the q-point joint posteriors are what cost, and they only matter near the top.
    with torch.no_grad():
        values = acqf(pool.unsqueeze(-2))
    shortlist = pool[values.topk(min(SHORTLIST, pool.shape[0])).indices]
    candidates, _ = optimize_acqf_discrete(acqf, q=q, choices=shortlist, return_acq_values=False)
    return candidates
