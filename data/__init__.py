"""The data path (``arrcoc.data``): shards -> sources -> streams -> preprocessing -> batches.

See ``data/README.md`` for the shard format and the ``arrcoc data`` commands.
"""

from arrcoc.data.collate import MODEL_KEYS, collate_vqa, model_inputs
from arrcoc.data.prompt import VQA_INSTRUCTION, VQAPromptBuilder

__all__ = ["MODEL_KEYS", "VQA_INSTRUCTION", "VQAPromptBuilder", "collate_vqa", "model_inputs"]


def __getattr__(name: str):
    # The DataModule pulls in Lightning: load it on first use, not on ``import arrcoc.data``.
    if name == "VQADataModule":
        from arrcoc.data.datamodule import VQADataModule

        return VQADataModule
    raise AttributeError(f"module 'arrcoc.data' has no attribute {name!r}")
