"""The data path (``arrcoc.data``): prompts and batching now; WebDataset shards, converters and the
streaming DataModule build on them."""

from arrcoc.data.collate import collate_vqa
from arrcoc.data.prompt import VQA_INSTRUCTION, VQAPromptBuilder

__all__ = ["VQA_INSTRUCTION", "VQAPromptBuilder", "collate_vqa"]
