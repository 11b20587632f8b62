"""`python -m training tune`: the recipe chosen on validation, then trained once in full (issue 34). What each stage
searches is training.tune_space; this module runs the studies and the trials.

Two Optuna searches (TPE sampler, seeded; median pruning), cheapest first. Each starts with the configured recipe as
its first trial, so the search keeps it unless something beats it on validation:
1. head: phase 1 alone on the feature cache (the backbone runs once for every trial; a trial costs seconds):
   phase1.lr, phase1.weight_decay, phase1.epochs, model.hidden_dim, model.dropout, augment.label_smoothing,
   data.balance.
2. fine-tuning: phase 2 from the best head (its phase 1 run once and kept in memory): phase2.unfreeze (up to
   tune.max_unfreeze stages from the top), phase2.gradual_every, phase2.head_lr, phase2.backbone_lr, phase2.epochs.
   Each epoch's validation is reported; a trial under the median of the earlier ones at that epoch stops there.
3. image size: the recipe chosen so far (found, or the configured one where nothing beat it), both phases, at each
   of tune.image_sizes (64 px either side of the configured size by default), each size with a feature cache of its
   own. Image size changes every cached feature, so it cannot share the head search's cache; it comes last, over
   a few whole recipes. Every backbone in training.registry is convolutional with global pooling, so it takes any
   size from 32 px; a tie keeps the configured size (then the smaller: cheaper to serve).
The objective, named in the log: validation macro-F1 where the training classes are imbalanced, accuracy
otherwise; early stopping and the best-epoch restore use it too. The search never reads the test split: the chosen
recipe, its phase 2 lengthened to the epochs that fill tune.final_minutes (default: the search's budget;
training.tune_length), is then trained in full by the normal job (training.job.train_job: evaluated once on test,
reported, exported, published), and model.json's `tuning`, the report and <output_dir>/tune/ (trials.csv, tune.json)
say how it was chosen. Katib's trial in the cluster is training.katib_trial.

A killed search resumes: both studies live in <output_dir>/tune/study.db (Optuna's RDB storage on SQLite); a trial
that was running is marked failed and queued again with its settings; the final training resumes from its
checkpoints like any run.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import optuna
import torch
import yaml
from optuna.trial import TrialState

from contract.card import Tuning
from contract.files import write_atomic

from . import run_identity
from .config import TrainConfig
from .data import Splits
from .job import new_model, prepared_splits, train_counts, train_job
from .log import event
from .runtime import setup_runtime
from .state import TrainState
from .train import Trainer
from .tune_length import EPOCH_SECONDS, final_length, log_length, median_seconds
from .tune_report import plot_search, seconds, write_trials
from .tune_space import (
    dotted,
    finetune_defaults,
    finetune_space,
    head_defaults,
    head_space,
    objective_of,
    size_choices,
    sized,
    split_phases,
    with_params,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def size_study(storage: optuna.storages.RDBStorage, cfg: TrainConfig, value: float) -> optuna.Study:
    """The chosen recipe at each other image size, queued smaller first. The configured size's value is the
    recipe's own, already measured by the searches before: recorded as the first trial, not run again."""
    choices = size_choices(cfg)
    found = optuna.create_study(storage=storage, study_name="size", direction="maximize", load_if_exists=True)
    if not found.trials:
        distribution = optuna.distributions.CategoricalDistribution(choices)
        found.add_trial(optuna.trial.create_trial(params={"data.image_size": choices[0]}, value=value,
                                                  distributions={"data.image_size": distribution},
                                                  user_attrs={"configured": True}))
        for size in choices[1:]:
            found.enqueue_trial({"data.image_size": size})
    requeue_interrupted(found)
    return found


def size_values(found: optuna.Study) -> dict[int, float]:
    """Validation objective by image size in the order tried, the configured size first; a size the budget left
    out is missing."""
    return {t.params["data.image_size"]: t.value
            for t in found.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}


def study(storage: optuna.storages.RDBStorage, name: str, cfg: TrainConfig, seed_offset: int,
          defaults: dict) -> optuna.Study:
    """The stage's study, created with the configured recipe queued first, or reopened: a trial left running by a
    killed search is marked failed and queued again with the same settings."""
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1) if cfg.tune.prune \
        else optuna.pruners.NopPruner()
    found = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed + seed_offset), pruner=pruner)
    if not found.trials:
        found.enqueue_trial(defaults, user_attrs={"configured": True})
    requeue_interrupted(found)
    return found


def requeue_interrupted(found: optuna.Study) -> None:
    for t in found.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        found.tell(t.number, state=TrialState.FAIL)
        found.enqueue_trial(t.params, user_attrs={"rerun_of": t.number, **t.user_attrs})
        event(f"search {found.study_name}: trial {t.number} was interrupted; it runs again with the same settings")


class Search:
    """Runs trials on one set of splits: the data read once, the feature cache built once."""

    def __init__(self, cfg: TrainConfig, splits: Splits, device: torch.device, objective: str, folder: Path):
        self.cfg, self.splits, self.device, self.objective, self.folder = cfg, splits, device, objective, folder
        self.deadline: float | None = None  # time.monotonic() after which a running trial stops (run sets it)

    def trainer(self, cfg: TrainConfig, on_epoch=None) -> Trainer:
        cfg = with_params(cfg, {"output_dir": str(self.folder / "trial")})  # a trial writes nothing of the run's
        model = new_model(cfg, len(self.splits.classes), self.device)
        return Trainer(cfg, self.splits, model, self.device, checkpoints=False,
                       features_path=self.features(cfg.data.image_size), on_epoch=on_epoch)

    def features(self, size: int) -> Path:
        return self.folder / f"phase1_features_{size}px.pt"  # one cache per size, kept

    def build_cache(self) -> float:
        """Builds (or loads) the feature cache every head trial loads, before the head search's clock starts; returns
        its seconds. It is the search's cost, not the head stage's share: on the CIFAR-10 subset it took 89 s of a
        90 s share, and every head trial after the first was cut by the budget."""
        t0 = time.monotonic()
        self.trainer(self.cfg).phase1_features()
        return time.monotonic() - t0

    def reporter(self, trial: optuna.Trial, phase: int, median: bool = True):
        """Reports each epoch of `phase`; stops the trial under the median (where `median`), or when the stage's
        time is up: the budget then binds within an epoch, not only between trials. The configured settings'
        trial always runs to its end (the baseline)."""
        def report(row: dict) -> None:
            if row["phase"] == 2:  # what a lengthened final run of this recipe will cost per epoch (final_length)
                trial.set_user_attr(EPOCH_SECONDS, [*trial.user_attrs.get(EPOCH_SECONDS, []), row["seconds"]])
            if row["phase"] != phase:
                return
            trial.report(row[self.objective], row["epoch"])
            if median and trial.should_prune():
                raise optuna.TrialPruned(f"epoch {row['epoch']}: {row[self.objective]:.4f} under the median")
            if self.deadline is not None and time.monotonic() > self.deadline \
                    and not trial.user_attrs.get("configured"):
                trial.set_user_attr("cut", "budget")
                raise optuna.TrialPruned(f"epoch {row['epoch']}: the search's budget is spent")
        return report

    def head_trial(self, trial: optuna.Trial) -> float:
        cfg = with_params(self.cfg, head_space(trial, self.cfg) | {"phase2.epochs": 0})
        trainer = self.trainer(cfg, self.reporter(trial, 1))
        trainer.fit()
        return trainer.state.best

    def head(self, params: dict) -> tuple[TrainConfig, dict, TrainState]:
        """Phase 1 with the chosen head settings, run once: the weights and state every phase-2 trial starts from."""
        cfg = with_params(self.cfg, params | {"phase2.epochs": 0})
        trainer = self.trainer(cfg)
        trainer.fit()
        weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        return cfg, weights, dataclasses.replace(trainer.state, phase=2, epoch=0)

    def finetune_trial(self, trial: optuna.Trial, head: tuple[TrainConfig, dict, TrainState]) -> float:
        return self.finetune(head, finetune_space(trial, self.cfg), self.reporter(trial, 2))

    def size_trial(self, trial: optuna.Trial, recipe: dict) -> float:
        size = trial.suggest_categorical("data.image_size", size_choices(self.cfg))
        return self.recipe(*split_phases(recipe | sized(self.cfg, size)), self.reporter(trial, 2, median=False))

    def recipe(self, head_params: dict, finetune_params: dict, on_epoch=None) -> float:
        """A whole recipe's validation objective (both phases)."""
        return self.finetune(self.head(head_params), finetune_params, on_epoch)

    def finetune(self, head: tuple[TrainConfig, dict, TrainState], params: dict, on_epoch=None) -> float:
        head_cfg, weights, state = head
        cfg = with_params(head_cfg, params)
        trainer = self.trainer(cfg, on_epoch)
        trainer.model.load_state_dict(weights)
        trainer.checkpoints.best_state = {k: v.clone() for k, v in weights.items()}  # phase 1's best is the floor
        trainer.state = dataclasses.replace(state, history=list(state.history))
        trainer.fit()
        return trainer.state.best


def searched(cfg: TrainConfig) -> TrainConfig:
    """The settings every trial and the final run share: the objective drives early stopping and the best-epoch
    restore; phase 1 on the feature cache as in the search (the same views, so the same head)."""
    return with_params(cfg, {"phase1.feature_cache": "always"})


def run(search: Search, found: optuna.Study, target: int, seconds: float | None, objective) -> None:
    """Trials until `target` have finished or `seconds` have passed (a running trial stops at its next epoch); the
    first (the configured settings) always, to its end."""
    search.deadline = None if seconds is None else time.monotonic() + seconds
    if not found.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        found.optimize(objective, n_trials=1, callbacks=[log_trial])
    done = len(found.get_trials(deepcopy=False, states=FINISHED))
    if done < target and (seconds is None or seconds > 0):
        found.optimize(objective, n_trials=target - done, timeout=seconds, callbacks=[log_trial])


def log_trial(found: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    event(f"search {found.study_name}: trial {trial.number} {trial.state.name.lower()}"
          + (" (the budget is spent)" if trial.user_attrs.get("cut") else "")
          + (f", {trial.value:.4f}" if trial.value is not None else "")
          + (f" (best {found.best_value:.4f})" if any(t.state == TrialState.COMPLETE for t in found.trials) else ""),
          study=found.study_name, trial=trial.number, state=trial.state.name.lower(), value=trial.value,
          params=trial.params)


def search_seconds(*studies: optuna.Study) -> float:
    return sum(seconds(t) or 0.0 for s in studies for t in s.trials)


COARSE = 200  # validation images under which one image moves the objective by half a point or more


def warn_if_coarse(n: int, objective: str) -> None:
    """A search ranks recipes by the validation split; with few images, trials a photo apart are a tie."""
    if n < COARSE:
        event(f"warning: the validation split has {n} images, so one image is {100 / n:.1f} points of {objective}: "
              "the search cannot tell apart recipes closer than that, and a winner by one or two images may not "
              "hold on test; raise data.val_ratio or add images", validation_images=n)


def write_tuned_config(path: Path, cfg: TrainConfig, tuning: Tuning) -> None:
    """The chosen recipe as a job config a team can keep and review: `python -m training train --config` it."""
    head = (f"# Chosen by python -m training tune: validation {tuning.objective} {tuning.best_value:.4f} "
            f"(the configured recipe: {tuning.default_value:.4f}"
            + ("; nothing beat it, so it is kept" if tuning.kept_configured else "")
            + f"), {tuning.head_trials} head and {tuning.finetune_trials} fine-tuning trials"
            + ("" if tuning.final_phase2_epochs is None else
               f"; phase 2 lengthened from the chosen {tuning.params['phase2.epochs']} epochs to "
               f"{tuning.final_phase2_epochs} (tune.final_minutes)") + ".\n"
            "# Train it with: python -m training train --config <this file>\n")
    write_atomic(path, head + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    event(f"the chosen recipe as a job config: {path}", path=str(path))


def tune_job(cfg: TrainConfig, restart: bool = False) -> dict:
    """Search, then train the chosen recipe in full (training.job.train_job); returns that run's result."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("python -m training tune runs in one process: start it without torchrun (the final "
                         "training may then be run with torchrun from the config it writes)")
    out, folder = Path(cfg.output_dir), search_folder(cfg, restart)
    device = setup_runtime(cfg)
    splits = prepared_splits(cfg)[0]
    objective, why = objective_of(cfg, train_counts(splits))
    event(f"search objective: {objective} on the validation split ({why}); the test split is not read until the "
          "chosen recipe's final run", objective=objective)
    warn_if_coarse(len(splits.val), objective)
    base = searched(with_params(cfg, {"early_stop.metric": objective}))
    search = Search(base, splits, device, objective, folder)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(folder / 'study.db').resolve()}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = None if cfg.tune.budget_minutes is None else cfg.tune.budget_minutes * 60

    cache_seconds = search.build_cache()
    heads = study(storage, "head", base, 0, head_defaults(base))
    run(search, heads, cfg.tune.head_trials, None if budget is None else budget / 4, search.head_trial)
    best_head = head_space(optuna.trial.FixedTrial(heads.best_params), base)
    head = search.head(best_head)
    finetunes = study(storage, "finetune", head[0], 1, finetune_defaults(base))
    # the budget: a quarter for the head search, then fine-tuning up to three quarters where image sizes follow
    share = 0.75 if len(size_choices(base)) > 1 else 1.0
    left = None if budget is None else budget * share - cache_seconds - search_seconds(heads)
    run(search, finetunes, cfg.tune.trials, left, lambda t: search.finetune_trial(t, head))
    found = best_head | finetune_space(optuna.trial.FixedTrial(finetunes.best_params), base)
    configured = configured_recipe(search, heads, finetunes, base)
    keep = configured.value >= finetunes.best_value  # a tie keeps the team's own recipe
    recipe, value = (configured.params, configured.value) if keep else (found, finetunes.best_value)
    left = None if budget is None else budget - cache_seconds - search_seconds(heads, finetunes) - configured.seconds
    sizes_study, sizes = try_sizes(search, storage, recipe, value, left)
    studies = [heads, finetunes] + ([sizes_study] if sizes_study else [])
    size = max(sizes, key=sizes.get)  # the first of equals: the configured size, then the smaller
    if size != base.data.image_size:
        recipe = recipe | sized(base, size)
    per_epoch = median_seconds(chosen_epoch_seconds(
        base, size, configured.epoch_seconds if keep else finetunes.best_trial.user_attrs.get(EPOCH_SECONDS, []),
        sizes_study))
    final = final_length(base, recipe["phase2.epochs"], per_epoch)
    tuning = Tuning(objective=objective, why=why, best_value=sizes[size], default_value=configured.value,
                    params=recipe, kept_configured=keep and size == base.data.image_size,
                    head_trials=len(heads.get_trials(deepcopy=False, states=FINISHED)),
                    finetune_trials=len(finetunes.get_trials(deepcopy=False, states=FINISHED)),
                    pruned=sum(len(s.get_trials(deepcopy=False, states=(TrialState.PRUNED,))) for s in studies),
                    search_seconds=round(cache_seconds + search_seconds(*studies) + configured.seconds, 1),
                    image_sizes=sizes, final_phase2_epochs=final,
                    phase2_epoch_seconds=None if per_epoch is None else round(per_epoch, 2))
    trained = with_params(base, tuning.params | ({"phase2.epochs": final} if final else {}))
    write_trials(folder, studies, tuning)
    write_tuned_config(folder / "tuned.yaml", trained, tuning)
    plot_search(out / "report", studies, objective, configured.value)
    log_choice(tuning, finetunes.best_value, keep, size_choices(base), size)
    log_length(trained, tuning)
    # the search's feature cache at the chosen size: the final run's phase 1 loads it instead of building it again
    # (42 s of the CIFAR-10 subset's run on the Xeon of bench/RESULTS.md)
    return train_job(trained, tuning=tuning, features=search.features(trained.data.image_size))


def chosen_epoch_seconds(base: TrainConfig, size: int, seconds: list[float], sizes: optuna.Study | None) -> list[float]:
    """The phase-2 epochs' seconds of the recipe trained in full, as its own trial measured them: the image size
    trial's where another size won, else `seconds` (the configured recipe's run, or the found recipe's trial)."""
    if size == base.data.image_size or sizes is None:
        return seconds
    runs = [t.user_attrs.get(EPOCH_SECONDS, []) for t in sizes.get_trials(deepcopy=False, states=(
        TrialState.COMPLETE,)) if t.params.get("data.image_size") == size]
    return runs[0] if runs else []


def search_folder(cfg: TrainConfig, restart: bool) -> Path:
    """<output_dir>/tune, refused where output_dir holds a run that `tune` did not start."""
    out = Path(cfg.output_dir)
    folder = out / "tune"
    if restart:
        run_identity.clear(out)
    elif (out / run_identity.IDENTITY_FILE).is_file() and not folder.is_dir():
        raise run_identity.RunMismatch(f"{out} holds a run that `tune` did not start: search into another "
                                       "output_dir, or start over there with --restart")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def try_sizes(search: Search, storage: optuna.storages.RDBStorage, recipe: dict, value: float,
              seconds: float | None) -> tuple[optuna.Study | None, dict[int, float]]:
    """The recipe at the other image sizes (size_study), as time allows: its study, and the validation value by
    size, the configured size's (`value`) first."""
    choices = size_choices(search.cfg)
    if len(choices) == 1:
        return None, {choices[0]: value}
    found = size_study(storage, search.cfg, value)
    run(search, found, len(choices), seconds, lambda t: search.size_trial(t, recipe))
    return found, size_values(found)


def log_choice(tuning: Tuning, found: float, keep: bool, sizes: list[int], size: int) -> None:
    event(f"search done after {tuning.head_trials} head and {tuning.finetune_trials} fine-tuning trials "
          f"({tuning.pruned} pruned), {tuning.search_seconds:.0f} s: validation {tuning.objective} {found:.4f} "
          f"found, {tuning.default_value:.4f} for the configured recipe ("
          + ("nothing beat it" if keep else "the found one is chosen")
          + "); by image size: " + ", ".join(f"{k} px {v:.4f}" for k, v in tuning.image_sizes.items())
          + "".join(f", {k} px not measured (tune.budget_minutes)" for k in sizes if k not in tuning.image_sizes)
          + f"; trained in full at {size} px", **tuning.params)


@dataclasses.dataclass(frozen=True)
class Configured:
    params: dict
    value: float
    seconds: float
    epoch_seconds: list[float]  # its phase-2 epochs' seconds


def configured_recipe(search: Search, heads: optuna.Study, finetunes: optuna.Study, base: TrainConfig) -> Configured:
    """The configured recipe's validation objective, both phases as configured: the fine-tuning search's first
    trial where the configured head won the head search, else one more run (its value kept in the study, so a
    resumed search does not run it again)."""
    params = {key: dotted(base, key) for key in (*head_defaults(base), *finetune_defaults(base))}
    first = [t for t in finetunes.trials if t.user_attrs.get("configured") and t.state == TrialState.COMPLETE]
    if heads.best_trial.user_attrs.get("configured") and first:
        return Configured(params, first[0].value, 0.0, first[0].user_attrs.get(EPOCH_SECONDS, []))
    if "configured_recipe" not in finetunes.user_attrs:
        start, epochs = time.perf_counter(), []

        def timed(row: dict) -> None:  # its phase-2 epochs' seconds, for a lengthened final run (final_length)
            if row["phase"] == 2:
                epochs.append(row["seconds"])

        value = search.recipe(*split_phases(params), timed)
        finetunes.set_user_attr("configured_recipe", {"value": value, "seconds": time.perf_counter() - start,
                                                      EPOCH_SECONDS: epochs})
    saved = finetunes.user_attrs["configured_recipe"]
    return Configured(params, saved["value"], saved["seconds"], saved.get(EPOCH_SECONDS, []))
