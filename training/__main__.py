"""python -m training {inspect,train,tune,trial,export,predict,evaluate,publish,compare,baseline,demo} ...

Console script: imgcls-train.

Exit codes: 0 done; 1 a clear error (data, weights, export checks); 2 bad config or an output directory holding
another run; 3 trained and exported but not published (publish gate); 75 preempted (checkpoint written, resumable).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from contract.precision import PRECISIONS

from .config import ConfigError, load_config
from .publish import EXIT_NOT_PUBLISHED, PublishRefused
from .run_identity import RunMismatch


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training", description="ImageNet transfer learning, two phases.")
    sub = ap.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="how a dataset would be read: layout, classes, counts, what is left out")
    i.add_argument("data", help="dataset folder or CSV, or an object-store URL of one")
    i.add_argument("--config", type=Path)
    i.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    t = sub.add_parser("train", help="fine-tune, evaluate, export")
    t.add_argument("--config", type=Path, help="YAML file (fields of training.config.TrainConfig)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set phase2.epochs=8 (repeatable)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("--restart", action="store_true",
                   help="start over in output_dir: delete the run there (checkpoints, final/, report/) first")
    tu = sub.add_parser("tune", help="choose the recipe on validation (Optuna), then train it in full")
    tu.add_argument("--config", type=Path)
    tu.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tu.add_argument("--restart", action="store_true", help="start the search and the run over in output_dir")
    tr = sub.add_parser("trial", help="one trial of a search run by Katib: train (resumable), print the validation "
                                      "metrics as name=value lines; no test split, no export")
    tr.add_argument("--config", type=Path)
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    e = sub.add_parser("export", help="checkpoint -> published ONNX artifact")
    e.add_argument("--checkpoint", type=Path, required=True, help="runs/<name>/final/model.pt")
    e.add_argument("--out", help="artifacts root, a folder or an object-store URL (default: the run's "
                                 "artifacts_dir)")
    p = sub.add_parser("predict", help="top-k for image files with a published artifact (onnxruntime)")
    p.add_argument("--model", type=Path, required=True, help="artifacts/<name> or a version directory")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: the first int8 file (8-bit, then 7-bit weights) that passes its canary check here, "
                        "else fp32")
    p.add_argument("images", type=Path, nargs="+")
    for name, text in (("compare", "pretrained two-phase vs random init vs small CNN, one table"),
                       ("baseline", "small CNN from scratch on the same splits, beside the main run")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--config", type=Path)
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        c.add_argument("--results", type=Path, help="append the table to this markdown file (bench/RESULTS.md)")
    ev = sub.add_parser("evaluate", help="metrics and report/ for a checkpoint (final/model.pt) on a dataset")
    ev.add_argument("--model", type=Path, required=True, help="runs/<name>/final/model.pt")
    ev.add_argument("--data", type=Path, help="dataset (default: the one it was trained on)")
    ev.add_argument("--out", type=Path, help="report folder (default: <output_dir>/report)")
    d = sub.add_parser("demo", help="train on the default dataset, export, serve, predict over HTTP")
    d.add_argument("--data", help="dataset folder (default ../shared/data/hymenoptera_data)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--restart", action="store_true", help="start the demo's run over")
    pub = sub.add_parser("publish", help="make a version the one served (LATEST), by hand")
    pub.add_argument("--model", type=Path, required=True, help="artifacts/<name>")
    pub.add_argument("version", help="a version directory name under artifacts/<name>")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "inspect":
            from .inspect_data import describe
            cfg = load_config(args.config, args.overrides)
            from .object_store import local_data
            cfg.data.path = args.data
            print(describe(local_data(cfg.data, cfg.output_dir)), end="")
        elif args.command == "train":
            cfg = load_config(args.config, args.overrides)
            if args.print_config:
                print(json.dumps(cfg.model_dump(mode="json"), indent=2))
                return 0
            from .job import train_job
            train_job(cfg, args.restart)
        elif args.command == "tune":
            from .tune import tune_job
            tune_job(load_config(args.config, args.overrides), args.restart)
        elif args.command == "trial":
            from .katib_trial import trial_job
            trial_job(load_config(args.config, args.overrides))
        elif args.command in ("compare", "baseline"):
            from . import compare
            getattr(compare, args.command)(load_config(args.config, args.overrides), args.results)
        elif args.command == "evaluate":
            from .job import evaluate_job
            print(evaluate_job(args.model, args.data, args.out))
        elif args.command == "demo":
            from .demo import demo
            return demo(args.data, args.overrides, args.restart)
        elif args.command == "publish":
            from .publish import publish_by_hand
            print(publish_by_hand(args.model, args.version))
        elif args.command == "export":
            from .job import export_job
            print(export_job(args.checkpoint, args.out))
        elif args.command == "predict":
            from .predict import predict_files
            rows = predict_files(args.model, args.images, args.top_k, args.precision)
            print(f"precision {rows[0]['precision']}: {rows[0]['precision_note']}", file=sys.stderr)
            for row in rows:
                print(row["file"] + "  " + "  ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top_k"]))
        return 0
    except (ConfigError, RunMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PublishRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_PUBLISHED
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # User-facing failures (bad data, missing weights, skew gate) end in one clear line, not a traceback.
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
