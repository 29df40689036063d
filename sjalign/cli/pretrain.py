"""sjalign pretrain: train one JEPA encoder on one view of a dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import (
    ClassesOpt,
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    ImageSizeOpt,
    JsonOpt,
    NumWorkersOpt,
    SeedOpt,
    cli_command,
    console,
    emit_json,
)


def _vit_for_data(model: str, shape: tuple[int, int, int], patch_size: int | None):
    """The preset's ViT with the data's channels and size (and --patch-size), or None for an unknown preset."""
    import dataclasses

    from sjalign.errors import SjalignError
    from sjalign.jepa.vit import PRESETS

    if model not in PRESETS:
        return None  # PretrainConfig names the known presets
    preset = PRESETS[model]
    c, size, _ = shape
    patch = preset.patch_size if patch_size is None else patch_size
    if patch < 1:
        raise SjalignError(f"--patch-size must be a positive number of pixels, got {patch}")
    if size % patch:
        raise SjalignError(f"image size {size} is not a multiple of the patch size {patch} "
                           "(choose --image-size and --patch-size so that the patch divides the image)")
    return dataclasses.replace(preset, img_size=size, in_chans=c, patch_size=patch)


def _objective_options(ctx: typer.Context, objective: str) -> dict:
    """The objective options on the command line (``--reg-weight 0.1`` or ``--reg-weight=0.1``), parsed and checked.

    Each objective declares its options (``Objective.options``); any option some objective
    declares is recognised here, then refused unless ``objective`` declares it.

    Raises:
        UsageError: a flag no objective declares, or a stray argument (exit 2, Typer's usage error).
        SjalignError: a value of the wrong type, or an option of another objective.
    """
    try:  # typer >= 0.2x vendors click; its usage errors exit 2 with the command's usage line
        from typer._click.exceptions import BadParameter, NoSuchOption, UsageError
    except ImportError:
        from click.exceptions import BadParameter, NoSuchOption, UsageError

    from sjalign.errors import SjalignError
    from sjalign.jepa.config import check_objective_options
    from sjalign.jepa.objectives import OBJECTIVE_OPTIONS, option_of

    values, args = {}, list(ctx.args)
    while args:
        token = args.pop(0)
        flag, _, text = token.partition("=")
        field = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if field not in OBJECTIVE_OPTIONS:
            if flag.startswith("-"):
                raise NoSuchOption(flag, ctx=ctx)
            raise UsageError(f"Got unexpected extra argument ({token})", ctx=ctx)
        if not _:
            if not args:
                raise BadParameter("requires a value", ctx=ctx, param_hint=f"'{flag}'")
            text = args.pop(0)
        try:
            values[field] = option_of(field).parse(text)
        except ValueError as exc:
            raise SjalignError(f"{flag} '{text}': not a valid value ({exc})") from None
    check_objective_options(objective, values, name=lambda f: "--" + f.replace("_", "-"))
    return values


def _saved_field(run_dir: Path, field: str):
    """A field of the run's saved ``config.json`` (None when unreadable: the trainer reports that)."""
    import json

    from sjalign.jepa.checkpoint import CONFIG_FILE

    try:
        return json.loads((run_dir / CONFIG_FILE).read_text()).get(field)
    except (OSError, ValueError, AttributeError):
        return None


def _resumed_options(run_dir: Path, objective: str, given: dict, options: dict) -> tuple[dict, dict]:
    """On --resume, the run's own epochs, batch size, lr, warm-up, input norm and objective options where none is
    given again.

    Without this a resumed run would silently fall back to the defaults (say ``--reg-weight``
    0.02 where the run was started with 0.5). A run of another objective is left to the
    trainer, which refuses it with the differing fields.
    """
    from sjalign.errors import SjalignError
    from sjalign.jepa.checkpoint import CONFIG_FILE
    from sjalign.jepa.config import PretrainConfig

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return given, options
    try:
        saved = PretrainConfig.from_json(path.read_text())
    except (OSError, UnicodeDecodeError, SjalignError):
        return given, options  # the trainer reads the checkpoint's own copy and reports what is wrong
    if saved.objective != objective:
        return given, options
    return ({**{f: getattr(saved, f) for f in ("epochs", "batch_size", "lr", "warmup_epochs", "input_norm")}, **given},
            {**saved.options, **options})


def _eval_set(selection, eval_states: int | None):
    """The fixed held-out selection the run is scored on (see :mod:`sjalign.jepa.monitor`), with its warnings."""
    import warnings

    import numpy as np

    from sjalign.jepa.monitor import DEFAULT_EVAL_STATES, EvalSet, pick_eval_rows

    train_rows, test_rows, available = pick_eval_rows(selection.is_test, len(selection),
                                                      eval_states=eval_states or DEFAULT_EVAL_STATES)
    if eval_states is not None and available < eval_states:
        warnings.warn(f"--eval-states {eval_states}: the selection holds {available} held-out states; "
                      f"evaluating on {available}", stacklevel=2)
    if selection.labels is None:
        warnings.warn(f"{selection.name}: no labels, so the online evaluation reports RankMe and the participation "
                      f"ratio only (no kNN or probe accuracy)", stacklevel=2)
    labels = None if selection.labels is None else np.asarray(selection.labels)
    return EvalSet(selection.subset(train_rows).materialize(), selection.subset(test_rows).materialize(),
                   None if labels is None else labels[train_rows], None if labels is None else labels[test_rows])


def _teacher_latents(spec: str, dataset: str, view: str, data_dir, subset, student, device: str, seed: int):
    """A frozen teacher's latents of the student's training states (:class:`sjalign.jepa.teacher.TeacherLatents`).

    The teacher sees ``view`` of the same dataset and selection; its states are matched to the
    student's by state id (rows it lacks are marked absent). Its forwards' FLOPs are counted.

    Raises:
        SjalignError: a spec that does not load, or no shared state id with the student.
    """
    import numpy as np
    from torch.utils.flop_counter import FlopCounterMode

    from sjalign.data import open_dataset
    from sjalign.embed import embed_dataset
    from sjalign.encoders import EncoderOptions, create_encoder
    from sjalign.errors import SjalignError
    from sjalign.jepa.config import PretrainConfig
    from sjalign.jepa.teacher import TeacherLatents

    enc = create_encoder(spec, EncoderOptions(pooling="mean", device=device))
    run = getattr(enc, "config", None)
    size = run.vit.img_size if isinstance(run, PretrainConfig) else None
    teacher_ds = open_dataset(dataset, view=view, data_dir=data_dir, subset=subset, image_size=size, seed=seed)
    shared, t_rows, s_rows = np.intersect1d(teacher_ds.state_ids, student.state_ids, return_indices=True)
    if len(shared) == 0:
        raise SjalignError(f"--teacher-view {view}: no state id shared with the student's view {student.view}")
    teacher_ds = teacher_ds.subset(t_rows)
    with FlopCounterMode(display=False) as counter:
        z = embed_dataset(enc, teacher_ds, batch_size=256)
    full = np.zeros((len(student.state_ids), z.shape[1]), np.float32)
    full[s_rows] = z
    present = np.zeros(len(student.state_ids), bool)
    present[s_rows] = True
    return TeacherLatents(full, present, spec, float(counter.get_total_flops()))


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def eval_line(figures: dict) -> str:
    """'probe 0.812  kNN 0.790  RankMe 41.2  PR 9.8' (n/a for a dataset without labels)."""
    return (f"probe {_fmt(figures['probe_acc'], '.3f')}  kNN {_fmt(figures['knn_acc'], '.3f')}  "
            f"RankMe {figures['rankme']:.1f}  PR {figures['participation_ratio']:.1f}")


def epoch_line(record: dict) -> str:
    """One line per epoch: loss and its terms, speed, FLOPs, and the evaluation when there was one."""
    if "loss" not in record:
        return f"epoch 0 (random init): {eval_line(record['eval'])}"
    terms = ", ".join(f"{k} {v:.4g}" for k, v in record.get("terms", {}).items() if len(record["terms"]) > 1)
    line = (f"epoch {record['epoch']}: loss {record['loss']:.4f}{' (' + terms + ')' if terms else ''}, "
            f"{record['img_per_s']:.0f} img/s, {record['flops']:.3g} training FLOPs, {record['seconds']:.1f} s")
    return line + (f"; {eval_line(record['eval'])}" if "eval" in record else "")


def _run_pair(config_a, selection_a, ds_a, view_b: str, method: str, seed_b: int, weight: float, every: int,
              open_args: dict, *, keep_split: str, output: Path, force: bool, eval_every: int,
              eval_states: int | None, patch_size: int | None, json_out: bool) -> None:
    """``pretrain --mutual VIEW``: model a on ``config_a``'s view, model b on VIEW (seed ``seed_b``), same states.

    Raises:
        SjalignError: the two views share no training state, or anything the trainer refuses.
    """
    import dataclasses

    import numpy as np

    from sjalign.data import open_dataset
    from sjalign.errors import SjalignError
    from sjalign.jepa import read_log
    from sjalign.jepa.mutual import MutualOptions, pretrain_pair
    from sjalign.report.curves import write_curves

    selection_b = open_dataset(view=view_b, seed=config_a.seed, **open_args)
    keep = np.ones(len(selection_b), bool) if keep_split == "all" else selection_b.is_test == (keep_split == "test")
    ds_b = selection_b.subset(np.flatnonzero(keep))
    shared, rows_a, rows_b = np.intersect1d(ds_a.state_ids, ds_b.state_ids, return_indices=True)
    if len(shared) < 2:
        raise SjalignError(f"--mutual {view_b}: shares {len(shared)} training state(s) with --view {ds_a.view}; "
                           "mutual teaching needs paired observations of the same states")
    ds_a, ds_b = ds_a.subset(rows_a), ds_b.subset(rows_b)  # row i of both: the same state
    config_a = dataclasses.replace(config_a, mutual={"method": method, "weight": weight, "every": every,
                                                     "role": "a", "partner_view": ds_b.view, "partner_seed": seed_b})
    config_b = dataclasses.replace(config_a, view=ds_b.view, seed=seed_b,
                                   vit=_vit_for_data(config_a.model, ds_b.shape, patch_size),
                                   mutual={**config_a.mutual, "role": "b", "partner_view": ds_a.view,
                                           "partner_seed": config_a.seed})
    sets = (None, None) if eval_every == 0 else (_eval_set(selection_a, eval_states), _eval_set(selection_b, eval_states))

    def on_start(runs: dict) -> None:
        if not json_out:
            console.print(f"pretrain a pair ({config_a.objective}, method {method}, γ {weight:g}, maps refitted every "
                          f"{every} steps): a on view {ds_a.view}, b on view {ds_b.view}, {len(ds_a)} states, "
                          f"{config_a.epochs} epoch(s) on {runs['a']['device']} -> {output}/a, {output}/b")

    def on_epoch(record: dict) -> None:
        run_dir = output / record["model"]
        if sets[0] is not None:  # each model's picture of its log so far, beside its checkpoint
            write_curves(run_dir, read_log(run_dir) if record["epoch"] else [record],
                         title=f"{config_a.objective} {config_a.model} on {config_a.dataset} view "
                               f"{(ds_a if record['model'] == 'a' else ds_b).view} (mutual, method {method})")
        if not json_out:
            console.print(f"{record['model']}: " + epoch_line(record))

    summary = pretrain_pair(config_a, config_b, ds_a.materialize(), ds_b.materialize(), output,
                            MutualOptions(method=method, weight=weight, every=every), overwrite=force,
                            eval_sets=sets, eval_every=max(eval_every, 1), on_start=on_start, on_epoch=on_epoch)
    if json_out:
        emit_json(summary)
    else:
        console.print(f"wrote {summary['a']['checkpoint']} and {summary['b']['checkpoint']} "
                      f"({summary['seconds']:.0f} s; {summary['flops']:.3g} training FLOPs for both, "
                      f"{summary['map_flops']:.3g} for {summary['align_fits']} map fits)")


@cli_command
def pretrain_command(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (checkpoint, train state, config.json, log.jsonl).")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name (see 'sjalign datasets').")] = "fashion-mnist",
    view: Annotated[str, typer.Option("--view", help="View spec the encoder sees, e.g. crop:top, azimuth:30.")] = "identity",
    objective: Annotated[str, typer.Option("--objective", help="Training objective; 'sjalign objectives' lists them with their options (--reg-weight, --temperature, ...), defaults and recipes.")] = "ijepa",
    model: Annotated[str, typer.Option("--model", help="ViT preset: vit_tiny (28 px, patch 4) or vit_small (ViT-S/16, 224 px).")] = "vit_tiny",
    epochs: Annotated[int | None, typer.Option("--epochs", help="Passes over the data; 0 writes the randomly initialised model (a control). [default: the objective's recipe]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per optimizer step, over all processes under torchrun. [default: the objective's recipe]")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (AdamW, linear warm-up then cosine). [default: the objective's recipe]")] = None,
    warmup_epochs: Annotated[float | None, typer.Option("--warmup-epochs", help="Length of the linear learning-rate warm-up, in epochs (fractions allowed). [default: the objective's recipe]")] = None,
    input_norm: Annotated[bool | None, typer.Option("--input-norm/--no-input-norm", help="Standardise the encoder's input pixels per channel with the training images' mean and std (kept in the checkpoint, so embed applies them too), as the reference implementations do. [default: on; --no-input-norm feeds raw pixels]")] = None,
    max_states: Annotated[int | None, typer.Option("--max-states", help="Use at most N states (train and test in proportion; only train ones are trained on).")] = None,
    split: Annotated[str, typer.Option("--split", help="States to train on: train (default), test or all.")] = "train",
    classes: ClassesOpt = None,
    image_size: ImageSizeOpt = None,
    patch_size: Annotated[int | None, typer.Option("--patch-size", help="ViT patch side in pixels (must divide the image size). [default: the preset's]")] = None,
    num_workers: NumWorkersOpt = 0,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", help="fp32 or bf16 (autocast, CUDA only).")] = "fp32",
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the modules (CUDA; no gain on CPU).")] = False,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Score the exported encoder on held-out states (kNN and linear-probe accuracy, RankMe, participation ratio) before the first step, every E epochs and after the last; 0 = off.")] = 1,
    teacher: Annotated[str | None, typer.Option("--teacher", help="Teacher–student migration: a frozen teacher encoder (any spec: jepa:RUN, timm:..., hf:..., a plugin's) whose latents the student is pulled towards.")] = None,
    teacher_view: Annotated[str | None, typer.Option("--teacher-view", help="The view the teacher sees of the same states. [default: --view]")] = None,
    teacher_mode: Annotated[str, typer.Option("--teacher-mode", help="align: μ‖W ẑ_s − ẑ_t‖² with W refitted by ridge every N steps (migration); kd: a linear head learned jointly instead (the distillation baseline).")] = "align",
    align_weight: Annotated[float, typer.Option("--align-weight", help="μ: weight of the alignment term (mean squared error in standardised teacher units).")] = 1.0,
    align_every: Annotated[int, typer.Option("--align-every", help="Refit W every N optimizer steps (--teacher-mode align).")] = 50,
    mutual: Annotated[str | None, typer.Option("--mutual", help="Mutual teaching: train a second model at once on this view of the same states, both with the cross-model term (γ = --align-weight, maps refitted every --align-every steps); writes -o/a and -o/b, two ordinary runs.")] = None,
    mutual_method: Annotated[str, typer.Option("--mutual-method", help="b: γ‖W z_a − z_b‖², one map, gradient to both models (strong coupling); a: each model pulled toward the other's latents mapped into its own space, detached (alternating alignment).")] = "b",
    mutual_seed: Annotated[int | None, typer.Option("--mutual-seed", help="Seed of the second model. [default: --seed + 1]")] = None,
    target_acc: Annotated[float | None, typer.Option("--target-acc", help="Record the first evaluated epoch (and its FLOPs) whose held-out probe accuracy reaches X, in (0, 1).")] = None,
    eval_states: Annotated[int | None, typer.Option("--eval-states", help="Held-out states scored (from the selection's test split; the probe and kNN fit on up to 5,000 of its train states). [default: 2000, or all there are]")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output from its last epoch.")] = False,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a JEPA world model on one view; checkpoints every epoch (safetensors), resumable.

    Examples:

      sjalign pretrain --dataset fashion-mnist --view crop:top --epochs 4 --max-states 12000 -o runs/top

      sjalign pretrain --view crop:top --epochs 4 --max-states 12000 -o runs/top --resume   # after an interruption

      torchrun --standalone --nproc-per-node 2 -m sjalign pretrain --view crop:top --batch-size 256 -o runs/top   # DDP

      sjalign pretrain --dataset smallnorb --data-dir norb/ --view azimuth=0 --image-size 48 --patch-size 8 -o runs/az0

      sjalign pretrain --objective lejepa --reg-weight 0.05 --num-views 2 --max-states 10000 -o runs/le   # 'sjalign objectives'

    Objective options (--reg-weight, --num-slices, --num-views, --proj-dim, --rgg-p, --temperature, --mask-ratio,
    --vicreg-weight, --vicreg-coeffs, ...) are declared by each objective: 'sjalign objectives' lists them.
    """
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sjalign.cli.common import check_choice, check_data_dir, check_device, check_fraction, check_image_size
    from sjalign.data import open_dataset
    from sjalign.data.lazy import IN_MEMORY_BYTES
    from sjalign.data.selection import Subset, parse_classes
    from sjalign.errors import SjalignError
    from sjalign.jepa import PretrainConfig, pretrain, read_log
    from sjalign.jepa.checkpoint import is_run_folder
    from sjalign.jepa.config import PRECISIONS
    from sjalign.jepa.mutual import METHODS
    from sjalign.jepa.teacher import MODES
    from sjalign.report.curves import write_curves

    if resume and force:
        raise SjalignError("--resume and --force contradict each other (continue a run, or start it afresh)")
    if mutual is None and (mutual_method != "b" or mutual_seed is not None):
        raise SjalignError("--mutual-method and --mutual-seed need --mutual")
    if mutual is not None:
        for flag, given_value in (("--teacher", teacher), ("--resume", resume or None)):
            if given_value is not None:
                raise SjalignError(f"--mutual and {flag} cannot be combined (mutual teaching trains two models from "
                                   "scratch, without a teacher, in one go)")
    if output.exists() and not output.is_dir():
        raise SjalignError(f"{output}: exists and is not a folder")
    if resume and not output.is_dir():
        raise SjalignError(f"{output}: no run to resume")
    if resume and _saved_field(output, "mutual"):
        raise SjalignError(f"{output}: a model of a mutual-teaching pair cannot be resumed (alone or as a pair); "
                           "restart the pair with --force")
    if mutual is not None and output.is_dir() and any(output.iterdir()):
        from sjalign.jepa.mutual import is_pair_folder

        if not force:
            raise SjalignError(f"{output}: folder already holds files (use --force to restart the pair)")
        if not is_pair_folder(output):
            raise SjalignError(f"{output}: not a pair folder written by sjalign pretrain --mutual (no readable "
                               "pair.json); --force restarts only those, so nothing was deleted")
    elif not resume and output.is_dir() and any(output.iterdir()):
        if not force:
            raise SjalignError(f"{output}: run folder already holds files (use --resume to continue or --force to "
                               "restart)")
        if not is_run_folder(output):
            raise SjalignError(f"{output}: not a run folder written by sjalign pretrain (no readable config.json); "
                               "--force restarts only those, so nothing was deleted")
    given = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr),
                               ("warmup_epochs", warmup_epochs), ("input_norm", input_norm)) if v is not None}
    options = _objective_options(ctx, objective)
    if resume:
        given, options = _resumed_options(output, objective, given, options)
    if split not in ("train", "test", "all"):
        raise SjalignError(f"--split '{split}': use train, test or all")
    if warmup_epochs is not None and not 0 <= warmup_epochs < float("inf"):
        raise SjalignError(f"--warmup-epochs must be a finite number >= 0, got {warmup_epochs}")
    if eval_every < 0:
        raise SjalignError(f"--eval-every must be >= 0 (0 = no online evaluation), got {eval_every}")
    if eval_states is not None and eval_states < 1:
        raise SjalignError(f"--eval-states must be >= 1, got {eval_states}")
    if patch_size is not None and patch_size < 1:
        raise SjalignError(f"--patch-size must be a positive number of pixels, got {patch_size}")
    check_choice("--precision", precision, PRECISIONS)
    if teacher is None and (teacher_view is not None or teacher_mode != "align"):
        raise SjalignError("--teacher-view and --teacher-mode need --teacher")
    check_choice("--teacher-mode", teacher_mode, MODES)
    check_choice("--mutual-method", mutual_method, METHODS)
    if not align_weight >= 0 or align_weight == float("inf"):
        raise SjalignError(f"--align-weight must be a finite number >= 0, got {align_weight}")
    if align_every < 1:
        raise SjalignError(f"--align-every must be >= 1 optimizer step, got {align_every}")
    if target_acc is not None:
        check_fraction("--target-acc", target_acc)
    check_device(device)
    check_image_size(image_size)
    check_data_dir(data_dir)
    # the same selection as `sjalign embed --max-states N --classes C`, then only its train (or test) states
    selection = open_dataset(dataset, view=view, data_dir=data_dir, image_size=image_size, seed=seed,
                             subset=Subset("all", parse_classes(classes), max_states))
    keep = np.ones(len(selection), bool) if split == "all" else selection.is_test == (split == "test")
    if not keep.any():
        raise SjalignError(f"no {split} states in the selection (--max-states {max_states}); nothing to train on")
    ds = selection.subset(np.flatnonzero(keep))
    teacher_config = saved_teacher = None
    if resume:
        saved_teacher = _saved_field(output, "teacher")
        target_acc = target_acc if target_acc is not None else _saved_field(output, "target_acc")
    if teacher is not None or saved_teacher is not None:
        spec = teacher if teacher is not None else saved_teacher["spec"]
        t_view = teacher_view or (saved_teacher["view"] if teacher is None else view)
        latents = _teacher_latents(spec, dataset, t_view, data_dir, Subset("all", parse_classes(classes), max_states),
                                   ds, device, seed)
        teacher_config = (saved_teacher if teacher is None else
                          {"spec": spec, "view": t_view, "weight": align_weight, "every": align_every,
                           "mode": teacher_mode, "dim": latents.dim})
    else:
        latents = None
    config = PretrainConfig(dataset=dataset, view=ds.view, objective=objective, model=model, max_states=max_states,
                            vit=_vit_for_data(model, ds.shape, patch_size), seed=seed, device=device,
                            precision=precision, compile=compile_model, num_workers=num_workers, options=options,
                            teacher=teacher_config, target_acc=target_acc, **given)
    if mutual is not None:
        _run_pair(config, selection, ds, mutual, mutual_method, seed + 1 if mutual_seed is None else mutual_seed,
                  align_weight, align_every, dict(dataset=dataset, data_dir=data_dir, image_size=image_size,
                                                  subset=Subset("all", parse_classes(classes), max_states)),
                  keep_split=split, output=output, force=force, eval_every=eval_every, eval_states=eval_states,
                  patch_size=patch_size, json_out=json_out)
        return
    # a selection that fits IN_MEMORY_BYTES is rendered once; a larger one is read lazily every epoch
    images = ds.materialize(num_workers=num_workers) if ds.nbytes <= IN_MEMORY_BYTES else ds
    quiet = json_out or os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports
    eval_set = None if eval_every == 0 or os.environ.get("RANK", "0") != "0" else _eval_set(selection, eval_states)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.0f} img/s  {task.fields[flops]:.3g} FLOP"
                          "{task.fields[eval]}"),
               TimeRemainingColumn())
    progress = Progress(*columns, console=console, disable=quiet)
    task = progress.add_task("steps", total=None, loss=float("nan"), ips=0.0, flops=0.0, eval="")

    def on_start(run: dict) -> None:  # after the trainer's checks: a refused run prints only its error
        if not quiet:
            procs = f" x {run['world_size']} processes" if run["world_size"] > 1 else ""
            resumed = f", resuming after epoch {run['start_epoch']}" if run["resumed"] else ""
            console.print(f"pretrain {objective} {model} on {dataset} view {view}: {len(images)} states, "
                          f"{config.epochs} epoch(s) on {run['device']}{procs}{resumed} -> {output}")
        if run["total_steps"] > run["start_epoch"] * run["steps_per_epoch"]:  # no bar for a run with no step to take
            progress.start()

    def on_step(step: int, total: int, loss: float, img_s: float) -> None:
        progress.update(task, completed=step, total=total, loss=loss, ips=img_s)

    def on_epoch(record: dict) -> None:
        if "eval" in record:
            progress.update(task, eval="  " + eval_line(record["eval"]))
        if eval_set is not None:  # the picture of the log so far (loss terms every epoch, figures when scored)
            write_curves(output, read_log(output) if record["epoch"] else [record],
                         title=f"{objective} {model} on {dataset} view {view}")
        progress.update(task, flops=float(record["flops"]))
        if not quiet:
            progress.console.print(epoch_line(record))

    try:
        summary = pretrain(config, images, output, resume=resume, overwrite=force, eval_set=eval_set,
                           eval_every=max(eval_every, 1), teacher=latents, on_start=on_start, on_step=on_step,
                           on_epoch=on_epoch)
    finally:
        if progress.live.is_started:  # Progress.stop() prints a newline even when never started
            progress.stop()
    if os.environ.get("RANK", "0") != "0":
        return
    if json_out:
        emit_json(summary)
    else:
        console.print(f"wrote {summary['checkpoint']} ({summary['num_params']:,} encoder parameters, "
                      f"{summary['seconds']:.0f} s on {summary['device']})")
