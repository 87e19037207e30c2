"""The bundle build's embeddings step: share the decoder's tied int4 lm_head, or write an own table (read from
the checkpoint a block of rows at a time)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..ground import contract
from ..checkpoint.weights import EMBED_TABLE
from .export import export_embeddings
from .shared_table import find_shared_int4_table
from .table import TableRows

if TYPE_CHECKING:
    from ..checkpoint.reader import Checkpoint
    from ..plan import BuildPlan

log = logging.getLogger(__name__)


def embeddings_step(ckpt: Checkpoint, plan: BuildPlan, out: Path) -> None:
    table = TableRows.of_checkpoint(ckpt, EMBED_TABLE)  # read a block of rows at a time, never whole
    shared = None
    if plan.embeddings_precision == "int4" and plan.lm_head_is_table:
        shared, why = find_shared_int4_table(out / contract.DECODER_FILENAME, *table.shape)
        log.info("embeddings int4: %s", f"reading the tied {why}" if shared else f"own table (cannot share: {why})")
    args = (table, ckpt.config.tokens.image_token_id, plan.num_deepstack, out / contract.EMBEDDING.filename)
    kwargs = dict(precision=plan.embeddings_precision, io_dtype=plan.io_dtype)
    if shared is not None:
        try:
            export_embeddings(*args, **kwargs, shared_table=shared)
            return
        except (ValueError, RuntimeError) as e:  # layout or dtype we did not foresee: a second table is still correct
            log.warning("embeddings int4: not sharing the lm_head (%s); writing an own table", e)
    export_embeddings(*args, **kwargs)
