"""Bayesian optimisation with a Gaussian process whose kernel reads the cell's decisions.

The model: a GP on a feature vector per architecture, one-hot codes for
categorical decisions (operations, inputs, combines) and the unit-scaled
value for numeric ones, with an ARD squared-exponential kernel

    k(x, x') = s2 * exp(-sum_c w_c (f_c - f'_c)^2)

which on one-hot codes is a product over decisions of exp(-2 w_d) per
decision that differs: the weights learn, by maximum marginal likelihood
(analytic gradients, the better of a warm and a fixed start), which
decisions matter (NB201: which edges). `ard="choice"` gives each (decision,
choice) column its own weight, so that conv_1x1 vs conv_3x3 may cost less
than conv vs none; `additive=True` adds a first-order kernel. Rewards are
rank-warped to normal scores by default, which spreads the good end of the
accuracy scale the search cares about and squeezes the long tail of broken
cells; trials without a reward (failed, or stopped early by a scheduler below
the top of their rung) count as the worst result seen.

Acquisition: expected improvement, maximised exactly over the whole space
when it is small (NAS-Bench-201's 15,625 cells), otherwise over random
samples plus mutations of the best architectures. Trials still training are
fantasised at the posterior mean (kriging believer), which keeps parallel
workers apart. Until `initial` results are in, proposals are random.

numpy and scipy only; deterministic given the seed (state: observations,
kernel parameters, the random generator).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Optional

import numpy as np

from kubenas.spaces import Genotype, SearchSpace
from kubenas.spaces.decisions import Categorical
from kubenas.strategies.base import Result, Strategy, Trial, numpy_rng_state, set_numpy_rng_state
from kubenas.strategies.encoding import Encoding


_THREADPOOLS: Any = None


def one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS on matrices this small gains nothing from threads and loses a lot on a
    busy node (several times slower); limit to one while the strategy computes,
    when threadpoolctl is installed."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        try:
            import scipy.linalg  # noqa: F401  (load scipy's BLAS before looking)
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _THREADPOOLS = False
        else:
            _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1) if _THREADPOOLS else contextlib.nullcontext()


class GPBayesOpt(Strategy):
    name = "gp-bo"

    def __init__(self, space: SearchSpace, seed: int = 0, initial: int = 10, acquisition: str = "ei",
                 beta: float = 2.0, warp: str = "rank", ceiling: float = 100.5, ard: str = "decision",
                 additive: bool = False, exhaustive_limit: int = 20000, candidates: int = 2000,
                 refit_every: int = 1, believer: bool = True):
        """
        initial: results needed before the model is used (proposals are random until then).
        acquisition: "ei" (expected improvement) or "ucb" (mean + beta * sd).
        warp: "rank" (normal scores of the ranks), "log" (-log(ceiling - reward); rewards
             must stay below `ceiling`) or "none".
        ard: "decision" (a kernel weight per decision), "choice" (one per one-hot column) or
             "auto" (choice when the one-hot code has at most 64 columns).
        additive: add a first-order kernel (a weight per decision on "same choice") to the
             product one, so that main effects generalise across distant architectures.
        exhaustive_limit: spaces up to this many architectures are scored whole.
        candidates: otherwise, this many random samples and as many mutations are scored.
        refit_every: re-estimate kernel weights after this many new results.
        believer: fantasise pending trials at the posterior mean.
        """
        super().__init__(space, seed)
        if acquisition not in ("ei", "ucb"):
            raise ValueError(f"gp-bo: acquisition must be 'ei' or 'ucb' (got {acquisition!r})")
        if warp not in ("log", "rank", "none"):
            raise ValueError(f"gp-bo: warp must be 'log', 'rank' or 'none' (got {warp!r})")
        if ard not in ("auto", "choice", "decision"):
            raise ValueError(f"gp-bo: ard must be 'auto', 'choice' or 'decision' (got {ard!r})")
        if initial < 2:
            raise ValueError(f"gp-bo: initial must be >= 2 (got {initial})")
        self.initial, self.acquisition, self.beta = initial, acquisition, beta
        self.warp, self.ceiling = warp, ceiling
        self.exhaustive_limit, self.n_candidates = exhaustive_limit, candidates
        self.refit_every, self.believer = refit_every, believer
        self.encoding = enc = Encoding(space)
        self.categorical = [isinstance(d, Categorical) for d in enc.decisions]
        # Feature columns: one-hot for categorical decisions, one column per numeric decision.
        widths = [d.size if c else 1 for d, c in zip(enc.decisions, self.categorical)]
        self.col_start = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
        self.width = int(sum(widths))
        if ard == "auto":
            ard = "choice" if self.width <= 64 else "decision"
        self.groups = np.arange(self.width) if ard == "choice" else \
            np.repeat(np.arange(len(widths)), widths)
        self.n_groups = int(self.groups.max()) + 1
        self.decision_of = np.repeat(np.arange(len(widths)), widths)  # column -> decision
        self.additive = additive
        self.exhaustive = all(self.categorical) and enc.cardinality <= exhaustive_limit
        self.np_rng = np.random.default_rng(seed)
        self.z: list[list[float]] = []  # observed points (index or unit value per decision)
        self.y: list[float] = []
        self.failed: list[list[float]] = []  # tried, no reward: never proposed again
        self.pending_z: dict[str, list[float]] = {}
        self.theta: Optional[list[float]] = None  # log weights per group, then log noise
        self.fitted_at = 0
        self._grid_cache: Optional[np.ndarray] = None

    # --- points <-> genotypes ---------------------------------------------------
    def _z_of(self, genotype: Genotype) -> list[float]:
        assignment = self.space.encode(genotype)
        return [float(d.index(assignment[d.name])) if c else float(d.to_unit(assignment[d.name]))
                for d, c in zip(self.encoding.decisions, self.categorical)]

    def _genotype_of(self, z: np.ndarray) -> Genotype:
        assignment = {d.name: d.choices[int(v)] if c else d.from_unit(float(v))
                      for d, c, v in zip(self.encoding.decisions, self.categorical, z)}
        return self.space.decode(assignment)

    def _features(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=float).reshape(-1, len(self.categorical))
        f = np.zeros((z.shape[0], self.width))
        rows = np.arange(z.shape[0])
        for k, cat in enumerate(self.categorical):
            if cat:
                f[rows, self.col_start[k] + z[:, k].astype(np.int64)] = 1.0
            else:
                f[:, self.col_start[k]] = z[:, k]
        return f

    def _grid_features(self, cands: np.ndarray) -> np.ndarray:
        if self._grid_cache is None:
            self._grid_cache = self._features(self.encoding.enumerate_all()).astype(np.float32)
        return self._grid_cache[self._key(cands)]

    def _key(self, z: np.ndarray) -> np.ndarray:
        """Mixed-radix code of categorical points (exhaustive mode)."""
        radix = np.cumprod([1] + self.encoding.sizes[:-1]).astype(np.int64)
        return np.asarray(z, dtype=np.int64).reshape(-1, len(radix)) @ radix

    # --- the contract ---------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Trial]:
        trials = []
        for _ in range(n):
            if len(self.y) < self.initial:
                z = self._random_z()
            else:
                with one_blas_thread():
                    z = self._best_candidate()
            trial = self._new_trial(self._genotype_of(np.asarray(z)))
            self.pending_z[trial.id] = [float(v) for v in z]
            trials.append(trial)
        return trials

    def _injected(self, trial: Trial) -> None:
        self.pending_z[trial.id] = self._z_of(trial.genotype)

    def _observe(self, trial: Trial, result: Result) -> None:
        z = self.pending_z.pop(trial.id, None) or self._z_of(trial.genotype)
        if result.reward is None or not math.isfinite(result.reward):
            self.failed.append(z)
        else:
            self.z.append(z)
            self.y.append(float(result.reward))

    # --- proposing ----------------------------------------------------------------------
    def _taken(self) -> list[list[float]]:
        return self.z + self.failed + list(self.pending_z.values())

    def _random_z(self) -> list[float]:
        taken = {tuple(t) for t in self._taken()}
        for _ in range(100):
            z = [float(self.rng.randrange(d.size)) if c else self.rng.random()
                 for d, c in zip(self.encoding.decisions, self.categorical)]
            if tuple(z) not in taken:
                break
        return z

    def _candidates(self) -> np.ndarray:
        taken = np.asarray(self._taken(), dtype=float)
        if self.exhaustive:
            grid = self.encoding.enumerate_all().astype(float)
            mask = np.ones(len(grid), dtype=bool)
            mask[self._key(taken)] = False
            return grid[mask]
        sizes = np.array(self.encoding.sizes)
        cat = np.array(self.categorical)
        m = self.n_candidates
        rand = np.where(cat, np.floor(self.np_rng.random((m, len(sizes))) * sizes), self.np_rng.random((m, len(sizes))))
        # Mutations of the best observed points: one or two decisions changed.
        top = np.asarray(self.z, dtype=float)[np.argsort(self.y)[::-1][:10]]
        parents = top[self.np_rng.integers(len(top), size=m)]
        muts = parents.copy()
        for step in range(2):
            rows = np.arange(m) if step == 0 else np.flatnonzero(self.np_rng.random(m) < 0.5)
            k = self.np_rng.integers(len(sizes), size=len(rows))
            new_cat = np.floor(self.np_rng.random(len(rows)) * sizes[k])
            new_num = np.clip(muts[rows, k] + 0.1 * self.np_rng.standard_normal(len(rows)), 0.0, 1.0)
            muts[rows, k] = np.where(cat[k], new_cat, new_num)
        cands = np.unique(np.concatenate([rand, muts]), axis=0)
        if len(taken):
            seen = {tuple(t) for t in taken}
            cands = cands[[tuple(c) not in seen for c in cands]]
        return cands

    def _transform(self, y: np.ndarray) -> np.ndarray:
        if self.warp == "log":
            y = -np.log(np.maximum(self.ceiling - y, 1e-9))
        elif self.warp == "rank":
            ranks = np.argsort(np.argsort(y, kind="stable"), kind="stable")
            y = _norm_ppf((ranks + 0.5) / len(y))
        return (y - y.mean()) / (y.std() + 1e-12)

    def _best_candidate(self) -> list[float]:
        cands = self._candidates()
        if len(cands) == 0:
            return self._random_z()
        # Trials without a reward (constraint violations, crashes, early stops) count as the
        # worst result seen, so the model steers away from where they happen.
        F = self._features(np.asarray(self.z + self.failed))
        y = self._transform(np.asarray(self.y + [min(self.y)] * len(self.failed)))
        if self.theta is None or len(self.y) + len(self.failed) - self.fitted_at >= self.refit_every:
            self._fit(F, y)
        kernel = self._kernel(np.asarray(self.theta))
        noise = math.exp(self.theta[-1])
        gp = _Posterior(F, y, kernel, noise)
        if self.believer and self.pending_z:
            P = self._features(np.asarray(list(self.pending_z.values())))
            gp = _Posterior(np.vstack([F, P]), np.concatenate([y, gp.mean(P)]), kernel, noise, scale=gp.scale)
        mu, sd = gp.mean_sd(self._grid_features(cands) if self.exhaustive else self._features(cands))
        if self.acquisition == "ucb":
            score = mu + self.beta * sd
        else:
            score = _expected_improvement(mu, sd, y.max())
        return [float(v) for v in cands[int(np.argmax(score))]]

    # --- kernel weights by maximum marginal likelihood -------------------------------------
    def _kernel(self, theta: np.ndarray) -> "_Kernel":
        g = self.n_groups
        w = np.exp(theta[:g])[self.groups]
        u = np.exp(theta[g:-1])[self.decision_of] if self.additive else None
        return _Kernel(w, u)

    def _fit(self, F: np.ndarray, y: np.ndarray) -> None:
        from scipy.optimize import minimize

        n_add = len(self.encoding.sizes) if self.additive else 0
        default = np.concatenate([np.full(self.n_groups, math.log(0.25)), np.full(n_add, math.log(0.1)),
                                  [math.log(0.1)]])
        starts = [default] if self.theta is None else [np.asarray(self.theta), default]
        bounds = [(-7.0, 3.0)] * self.n_groups + [(-9.0, 2.0)] * n_add + [(-9.0, 1.0)]
        # The likelihood has several optima: keep the better of a warm start and a fixed one.
        res = min((minimize(self._nll, x0, args=(F, y), jac=True, method="L-BFGS-B", bounds=bounds)
                   for x0 in starts), key=lambda r: r.fun)
        self.theta = [float(v) for v in res.x]
        self.fitted_at = len(self.y) + len(self.failed)

    def _nll(self, theta: np.ndarray, F: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Profiled negative log marginal likelihood and its gradient in log parameters."""
        from scipy.linalg import cho_factor, cho_solve

        n, g = len(y), self.n_groups
        kernel = self._kernel(theta)
        noise = math.exp(theta[-1])
        C = kernel.product(F, F)
        K = C + noise * np.eye(n)
        if kernel.u is not None:
            K += kernel.additive(F, F)
        try:
            chol = cho_factor(K, lower=True)
        except np.linalg.LinAlgError:
            return 1e10, np.zeros_like(theta)
        alpha = cho_solve(chol, y)
        q = max(float(y @ alpha), 1e-300)
        value = 0.5 * n * math.log(q / n) + float(np.log(np.diag(chol[0])).sum())
        W = 0.5 * cho_solve(chol, np.eye(n)) - 0.5 * (n / q) * np.outer(alpha, alpha)  # dNLL = <W, dK>
        M = W * C  # product part: dK/dw_c = -C * (f_c - f'_c)^2
        sq = 2.0 * (F * F).T @ M.sum(1) - 2.0 * (F * (M @ F)).sum(0)
        grad = np.empty_like(theta)
        grad[:g] = np.bincount(self.groups, weights=-kernel.w * sq, minlength=g)
        if kernel.u is not None:  # additive part: dK/du_c = f_c f_c'
            same = ((W @ F) * F).sum(0)
            grad[g:-1] = np.bincount(self.decision_of, weights=kernel.u * same, minlength=len(theta) - g - 1)
        grad[-1] = noise * float(np.trace(W))
        return value, grad

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(z=[list(v) for v in self.z], y=list(self.y), failed=[list(v) for v in self.failed],
                     pending_z={k: list(v) for k, v in self.pending_z.items()}, theta=self.theta,
                     fitted_at=self.fitted_at, np_rng=numpy_rng_state(self.np_rng))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.z = [list(v) for v in state["z"]]
        self.y = list(state["y"])
        self.failed = [list(v) for v in state["failed"]]
        self.pending_z = {k: list(v) for k, v in state["pending_z"].items()}
        self.theta = None if state["theta"] is None else list(state["theta"])
        self.fitted_at = state["fitted_at"]
        set_numpy_rng_state(self.np_rng, state["np_rng"])


class _Kernel:
    """exp(-sum_c w_c (f_c - f'_c)^2), plus sum_c u_c f_c f'_c when `u` is given."""

    def __init__(self, w: np.ndarray, u: Optional[np.ndarray] = None):
        self.w, self.u = w, u

    def product(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        w = self.w.astype(A.dtype)
        d = (A * A) @ w
        e = (B * B) @ w
        return np.exp(-np.maximum(d[:, None] + e[None, :] - 2.0 * (A * w) @ B.T, 0.0))

    def additive(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        return (A * self.u.astype(A.dtype)) @ B.T

    def __call__(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        K = self.product(A, B)
        return K if self.u is None else K + self.additive(A, B)

    def diag(self, A: np.ndarray) -> np.ndarray:
        ones = np.ones(len(A))
        return ones if self.u is None else ones + (A * A) @ self.u


class _Posterior:
    """GP posterior with the signal variance profiled out (s2 = y'K^-1y / n)."""

    def __init__(self, F: np.ndarray, y: np.ndarray, kernel: _Kernel, noise: float, scale: Optional[float] = None):
        from scipy.linalg import cho_factor, cho_solve

        self.F, self.kernel = F, kernel
        K = kernel(F, F) + noise * np.eye(len(F))
        self.chol = cho_factor(K, lower=True)
        self.alpha = cho_solve(self.chol, y)
        self.scale = float(y @ self.alpha / len(y)) if scale is None else scale

    def mean(self, G: np.ndarray) -> np.ndarray:
        return self.kernel(G, self.F) @ self.alpha

    def mean_sd(self, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy.linalg import solve_triangular

        # Scoring thousands of candidates: single precision is plenty for ranking them.
        G32 = G.astype(np.float32)
        Ks = self.kernel(G32, self.F.astype(np.float32))
        inv_chol = solve_triangular(self.chol[0], np.eye(len(self.F)), lower=True).astype(np.float32)
        v = Ks @ inv_chol.T
        var = np.maximum(self.kernel.diag(G) - (v * v).sum(1, dtype=np.float64), 1e-12) * self.scale
        return Ks @ self.alpha.astype(np.float32), np.sqrt(var)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(z)


def _norm_ppf(p: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri

    return ndtri(p)


def _expected_improvement(mu: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    z = (mu - best) / sd
    return (mu - best) * _norm_cdf(z) + sd * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
