"""What the plain (unsharded) models of both families share: the encoder a config names, and
the item rows' initial range and state-dict key. No TorchRec here (serving imports it)."""

from __future__ import annotations

from training.common.bert4rec import BERT4Rec
from training.common.config import EncoderConfig
from training.common.encoders import SequenceEncoder
from training.common.fuxi import FuXiAlpha
from training.common.hstu import HSTU
from training.common.lrurec import LRURec
from training.common.sasrec import SASRec

PLAIN_WEIGHT = "item_embedding.weight"  # state-dict key of the item rows
INIT_RANGE = 0.035  # item rows start uniform in [-r, r] (std 0.02, as the HSTU reference)


def build_encoder(config: EncoderConfig) -> SequenceEncoder:
    """The encoder ``config.kind`` names."""
    encoders: dict[str, type[SequenceEncoder]] = {
        "hstu": HSTU,
        "sasrec": SASRec,
        "fuxi": FuXiAlpha,
        "lrurec": LRURec,
        "bert4rec": BERT4Rec,
    }
    return encoders[config.kind](config)
