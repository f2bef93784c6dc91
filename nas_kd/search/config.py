"""The settings of one search run: one dataclass, parsed once, stored with the study.

Its field defaults are the command line's defaults too (``nas_kd.search.cli`` reads them from here).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nas_kd.distill import KDSettings
from nas_kd.errors import UserError
from nas_kd.quantity import format_quantity
from nas_kd.study.storage import check_study_name
from nas_kd.train import TrainSettings

SAMPLERS = ("tpe", "tpe-rungs", "random", "stratified", "local", "nsga2")
TAILS = ("rungs", "top-band")  # the order of promotions past each rung's quota (search.rungs.promotable)
OBJECTIVES = ("flops", "latency")
STORAGE_ENV = "NAS_KD_STORAGE"  # the storage URL when --storage is not given (keeps a password out of argv)


@dataclass(frozen=True)
class SearchConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    budget_flops: int = 5_000_000  # fvcore FLOPs (one multiply-add = one FLOP)
    budget_params: int | None = None  # a second constraint when given
    budget_memory: int | None = None  # int8 peak activation bytes (nas_kd.model.memory)
    budget_size: int | None = None  # int8 model bytes
    budget_latency_us: float | None = None  # onnxruntime latency, batch 1, on this machine
    objective: str = "flops"  # the front's cost axis: flops, or latency (measured)
    latency_threads: int = 1  # onnxruntime threads when latency is measured
    space: str = "default"
    trials: int = 40  # candidates to train in this run (over-budget ones are extra and free)
    timeout: float | None = None  # seconds; no new trial starts after it
    # seconds from the start: once every candidate is trained, promotions past each rung's 1/eta
    # share fill the time to here (0: none). The default search's 20 minutes, a minute spare.
    promote_until: float = 1140.0
    # past the quota: the budget's top third first, then the rest, each highest rung first ("rungs": no band first).
    # Short rungs rank the largest students worst, and --pick best is made among them (benchmarks/RESULTS.md, stop 43)
    tail: str = "top-band"
    seed: int = 0  # sampler seed and every trial's training seed
    split_seed: int = 0  # which images form the validation split
    val_size: float | None = None  # images (≥ 1) or a fraction (< 1); None: min(5000, 15%)
    train_subset: int | None = None  # training images per trial (None: the whole split)
    # rung 0's length: a third of an epoch of Fashion-MNIST's 55,000 images is 143 steps
    train: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=0.35, lr=0.1))
    min_steps: int = 150  # rung-0 SGD steps at least: small datasets get more epochs
    rungs: int = 3  # fidelities: rung k trains eta**k times rung 0's steps in all (1: one length, early stop)
    eta: int = 3  # growth of the steps per rung, and 1/eta of a rung's results go up
    kd: KDSettings = field(default_factory=KDSettings)
    self_distill: bool = False  # each candidate trains with an exit after every stage (nas_kd.distill.exits)
    teacher_seed: int = 0
    teachers: tuple[str, ...] = ()  # teacher recipes (several: logits averaged); () = the dataset's default
    teacher_weights: tuple[float, ...] | None = None  # ensemble weights, one per teacher; None = equal
    teacher_files: tuple[str, ...] = ()  # state dicts for factory teachers (pkg.module:factory), in order
    teacher_input: str = "normalised"  # what a brought teacher is fed: normalised images, or raw [0, 1]
    study_name: str | None = None
    storage: str | None = None  # any Optuna storage URL; default SQLite in studies_dir
    studies_dir: str = "studies"
    # measured over 6 seeds (one turn per band): random members spread over FLOP bands reach random search's
    # final hypervolume in a median 0.21x its time, plain random members never did on 3; TPE told rung 0 drifts cheap
    sampler: str = "stratified"
    warm_start: bool = True  # a new study trains the space's hand designs first
    early_stop: bool = True  # with one rung: stop half-way a candidate that cannot reach the front
    cache_dir: str | None = None  # teachers and their logits; default ~/.cache/nas_kd
    device: str = "auto"
    threads: int | None = None  # PyTorch CPU threads; None: the cores, shared among the workers
    workers: int = 1  # local worker processes sharing the study
    worker_index: int | None = None  # set in a worker process started by --workers
    run_id: str | None = None  # set in workers started together by --workers: they share the run's trials
    run_trials: int | None = None  # the run's --trials, which workers ahead of their share help finish

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if self.tail not in TAILS:
            raise UserError(f"unknown --tail {self.tail!r}: choose one of {', '.join(TAILS)}")
        for flag, value in (("--trials", self.trials), ("--workers", self.workers), ("--threads", self.threads)):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown --objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.latency_threads < 1:
            raise UserError(f"--latency-threads must be at least 1, got {self.latency_threads}")
        if self.rungs < 1 or self.eta < 2:
            raise UserError(f"--rungs must be at least 1 and --eta at least 2, got {self.rungs} and {self.eta}")
        if self.timeout is not None and not self.timeout > 0:
            raise UserError(f"--timeout must be a positive number of seconds, got {self.timeout:g}")
        if not self.promote_until >= 0:
            raise UserError(f"--promote-until must be 0 (off) or a positive number of seconds, "
                            f"got {self.promote_until:g}")
        if self.study_name is not None:
            check_study_name(self.study_name)
        if not 0 <= self.kd.alpha <= 1:
            raise UserError(f"--alpha must be in [0, 1], got {self.kd.alpha}")
        if self.kd.temperature <= 0:
            raise UserError(f"--temperature must be positive, got {self.kd.temperature}")
        if self.train.epochs <= 0:
            raise UserError(f"--epochs must be positive, got {self.train.epochs}")

    @property
    def name(self) -> str:
        if self.study_name:
            return self.study_name
        name = f"{self.dataset}-{format_quantity(self.budget_flops)}FLOPs"
        if self.budget_params:
            name += f"-{format_quantity(self.budget_params)}params"
        return re.sub(r"[^A-Za-z0-9._-]", "_", name)

    @property
    def stops_early(self) -> bool:
        """Half-way early stopping: a single-length search's way to spend less on hopeless candidates."""
        return self.early_stop and self.rungs == 1

    @property
    def uses_latency(self) -> bool:
        """Latency is measured for every candidate that fits the other budgets."""
        return self.objective == "latency" or self.budget_latency_us is not None

    @property
    def cost_budget(self) -> float | None:
        """The budget on the front's cost axis: FLOPs, or the latency budget under --objective latency."""
        return self.budget_latency_us if self.objective == "latency" else self.budget_flops

    @property
    def out_dir(self) -> Path:
        return Path(self.studies_dir) / self.name

    @property
    def training_threads(self) -> int:
        """PyTorch threads of each process that trains trials: ``threads``, or the machine's cores
        shared evenly among the local workers."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.studies_dir) / (self.name + '.db')}"

    def to_dict(self) -> dict:
        """Every field as plain data (nested settings as dicts), as recorded with the study."""
        return asdict(self)
