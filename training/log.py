"""Logs people can read on a terminal (with tqdm bars), one JSON object per line in a pod (no TTY)."""
from __future__ import annotations

import json
import logging
import os
import sys

from tqdm import tqdm

INTERACTIVE = sys.stderr.isatty()
RANK = int(os.environ.get("RANK", "0"))  # under torchrun, rank 0 speaks for the run


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def get_logger(name: str = "training") -> logging.Logger:
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S") if INTERACTIVE
                             else JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def event(msg: str, all_ranks: bool = False, **fields) -> None:
    """A log line with structured fields: readable on a terminal, machine-parsable in a pod."""
    if RANK != 0 and not all_ranks:
        return
    if RANK != 0 or "WORLD_SIZE" in os.environ:
        fields["rank"] = RANK
    log = get_logger()
    if INTERACTIVE and fields:
        msg = msg + "  " + "  ".join(f"{k}={_short(v)}" for k, v in fields.items())
    log.info(msg, extra={"fields": fields})


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def progress(iterable, total: int, desc: str):
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not INTERACTIVE or RANK != 0,
                dynamic_ncols=True)
