"""The training loop: every loss step trains exactly as recorded, resumes bit-identically, stops on NaN."""

import hashlib

import pytest
import torch

from nas_kd.distill import KDSettings
from nas_kd.errors import TrialFailed
from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec, StageSpec
from nas_kd.train import TrainSettings, train_model

N, CLASSES, VIEWS = 50, 3, 3  # 50 images in batches of 16: 3 steps an epoch, the last 2 images dropped


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(N, 1, 8, 8, generator=g), torch.randint(0, CLASSES, (N,), generator=g)


def _student() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_student(ArchSpec(1, CLASSES, 4, 1, (StageSpec("ds", 1, 8, 3, 2), StageSpec("ds", 1, 8, 3, 1))))


def _teacher() -> torch.nn.Module:
    torch.manual_seed(1)
    spec = ArchSpec(1, CLASSES, 6, 1, (StageSpec("ds", 1, 12, 3, 1), StageSpec("ds", 1, 16, 3, 2)))
    return build_student(spec).eval()


def _views(x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.stack([x + 0.1 * torch.randn(x.shape, generator=g) for _ in range(VIEWS)])


def _targets(kind: str, x: torch.Tensor) -> dict:
    """The keyword arguments ``train_model`` gets for each kind of teacher target."""
    teacher = _teacher()
    with torch.no_grad():
        if kind == "cached":
            return {"teacher_logits": teacher(x)}
        if kind == "views":
            views = _views(x)
            return {"views": views, "teacher_logits": torch.stack([teacher(v) for v in views])}
    return {"teacher": teacher} if kind == "live" else {}


# name: (augment, label smoothing, KD loss or None, which teacher targets)
CASES = {
    "labels": ("none", 0.0, None, None),
    "labels-erase": ("crop-flip-erase", 0.0, None, None),
    "smoothing": ("crop", 0.1, None, None),
    "hinton-cached": ("crop-flip", 0.0, "hinton", "cached"),
    "logit-l2-cached": ("none", 0.0, "logit-l2", "cached"),
    "hinton-views": ("crop-flip", 0.0, "hinton", "views"),
    "hinton-live": ("crop", 0.0, "hinton", "live"),
    "fitnet": ("crop-flip", 0.0, "fitnet", "live"),
    "attention": ("crop", 0.0, "attention", "live"),
    "rkd": ("none", 0.0, "rkd", "live"),
    "sp": ("crop-flip-erase", 0.0, "sp", "live"),
}

# Each case's recorded run: the final loss and the parameters' L1 norm, and (DIGESTS) the first 16
# hex digits of the final state_dict's sha256. A change to any random draw, loss or update changes
# them. The loss and norm must agree anywhere; the hash only with the kernels it was recorded with,
# which depend on the CPU as well as its instruction set (an AMD EPYC with AVX-512 differs from the
# first recording machine in the last bits), so hashes are kept per torch, capability and CPU model.
RECORDED = {
    "attention": (0.929655909538269, 80.16100512538105),
    "fitnet": (0.47903984785079956, 79.86017929110676),
    "hinton-cached": (0.327406108379364, 79.82985373679549),
    "hinton-live": (0.33653342723846436, 79.782278342871),
    "hinton-views": (0.33083289861679077, 79.81932684662752),
    "labels": (1.0586649179458618, 79.99479815084487),
    "labels-erase": (1.0233697891235352, 80.0240863552317),
    "logit-l2-cached": (0.3299969434738159, 79.71969152917154),
    "rkd": (5.273783206939697, 105.31443256139755),
    "smoothing": (1.06203293800354, 79.90339140314609),
    "sp": (0.3122721016407013, 79.89272885862738),
}


def _train(name: str, **kwargs) -> tuple[torch.nn.Module, object]:
    augment, smoothing, loss, kind = CASES[name]
    x, y = _data()
    settings = TrainSettings(epochs=2.5, batch_size=16, lr=0.05, label_smoothing=smoothing, augment=augment, seed=5)
    kd = KDSettings(loss=loss, temperature=2.0, alpha=0.7) if loss else None
    model = _student()
    result = train_model(model, x, y, settings, kd=kd, **_targets(kind, x), **kwargs)
    return model, result


def fingerprint(model: torch.nn.Module, result) -> tuple[str, float, float]:  # noqa: ANN001
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    l1 = sum(p.detach().abs().sum().item() for p in model.parameters())
    return h.hexdigest()[:16], result.final_loss, l1


DIGESTS = {
    ("2.13.", "AVX512", "AMD EPYC"): {
        "attention": "d0af03fe677e1f62", "fitnet": "592590466bdffc13", "hinton-cached": "89330e4784811d97",
        "hinton-live": "e78771eff69866fb", "hinton-views": "9a882f8c2b04cc3e", "labels": "4c807d35e99ffb1b",
        "labels-erase": "e93ef7da7f0dea4d", "logit-l2-cached": "8e39d8b6d6fcf69a", "rkd": "c2f4ef14d3a4a53c",
        "smoothing": "c4433b08c1a2d08a", "sp": "7204b26e4ffab315",
    },
}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def _recorded_digests() -> dict[str, str]:
    """This machine's recorded hashes, or none when its kernels were never recorded."""
    here = (torch.backends.cpu.get_cpu_capability(), _cpu_model())
    return next((d for (version, *kernels), d in DIGESTS.items()
                 if torch.__version__.startswith(version) and tuple(kernels) == here), {})


@pytest.fixture()
def one_thread():
    """Sums split over threads round differently: the recorded runs used one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_loss_step_trains_as_recorded(name, one_thread):
    model, result = _train(name)
    digest, loss, l1 = fingerprint(model, result)
    want_loss, want_l1 = RECORDED[name]
    assert result.steps == 8  # round(2.5 epochs × 3 steps)
    assert loss == pytest.approx(want_loss, rel=1e-4) and l1 == pytest.approx(want_l1, rel=1e-4)
    want_digest = _recorded_digests().get(name)
    if want_digest is not None:
        assert digest == want_digest, "the same draws and arithmetic give the same weights, bit for bit"


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    whole, _ = _train("hinton-cached")
    ckpt = tmp_path / "run.ckpt"

    def stop_in_epoch_two(step: int, total: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train("hinton-cached", checkpoint=ckpt, on_step=stop_in_epoch_two)
    assert ckpt.exists() and not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary left
    resumed, result = _train("hinton-cached", checkpoint=ckpt)
    assert result.steps == 8
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_feature_losses_refuse_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="does not checkpoint its adapters"):
        _train("fitnet", checkpoint=tmp_path / "run.ckpt")


def test_kd_without_targets_is_refused():
    x, y = _data()
    with pytest.raises(ValueError, match="needs teacher logits or a teacher"):
        train_model(_student(), x, y, TrainSettings(epochs=1, batch_size=16), kd=KDSettings())


def test_a_loss_that_stops_being_finite_fails_the_trial():
    x, y = _data()
    with pytest.raises(TrialFailed, match="loss became nan at step 1/"):
        train_model(_student(), x * float("nan"), y, TrainSettings(epochs=1, batch_size=16))


def test_labels_only_training_ignores_the_kd_loss_it_names():
    """An ablation's labels-only run keeps the recipe's loss name with alpha 0: plain cross-entropy."""
    x, y = _data()
    settings = TrainSettings(epochs=1, batch_size=16, seed=2)
    plain, named = _student(), _student()
    train_model(plain, x, y, settings)
    train_model(named, x, y, settings, kd=KDSettings(loss="fitnet", alpha=0.0))
    for a, b in zip(plain.state_dict().values(), named.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown KD loss 'nope'"):
        train_model(_student(), x, y, settings, kd=KDSettings(loss="nope", alpha=0.0))


def test_training_in_rungs_from_checkpoints_equals_training_straight_through(tmp_path):
    """A search promotion: rung 0 trains 4 steps (stopping inside epoch 2), is checkpointed, and later
    resumes to 8 steps with the schedule restarted at step 4; that is the run trained straight through
    with the same restart, weights and all."""
    straight, result = _train("hinton-cached", steps=8, restarts=(4,))
    assert result.steps == 8
    ckpt = tmp_path / "trial.ckpt"
    _, first = _train("hinton-cached", steps=4, checkpoint=ckpt)
    assert first.steps == 4 and ckpt.exists()
    promoted, second = _train("hinton-cached", steps=8, restarts=(4,), checkpoint=ckpt)
    assert second.steps == 8
    for a, b in zip(straight.state_dict().values(), promoted.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    without_restart, _ = _train("hinton-cached", steps=8)  # the restart changes the run: it is really used
    assert not all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(),
                                                      without_restart.state_dict().values(), strict=True))


def test_each_segment_of_a_restarted_schedule_anneals_towards_zero():
    from nas_kd.train.schedule import one_cycle, segment

    assert segment(0, 12, (4,)) == (0, 4) and segment(4, 12, (4,)) == (4, 12) and segment(11, 12, (4,)) == (4, 12)
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    lrs = []
    for first, end in ((0, 4), (4, 12)):
        sched = one_cycle(opt, 0.1, end - first)
        for _ in range(end - first):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    assert max(lrs[:4]) == pytest.approx(0.1, rel=0.3) and lrs[3] < 0.02  # rung 0 ends near zero
    assert lrs[4] < lrs[5] and lrs[11] < 0.01  # rung 1 warms up again, then anneals
