"""EM fine-tuning data: chat JSONL loading/validation, the dataset registry (fetch + verify into the
cache), chat-template formatting with assistant-only loss masks.

Public API (lazy; importing this package loads nothing heavy):
  load_chat_jsonl(path, limit=None) -> list[ChatExample]      DataError names file:line
  registry() -> {name: DatasetSpec};  get_spec(name)
  fetch(name, from_dir=None, force=False) -> Path             cache: $EVILBENCH_CACHE or ~/.cache/evilbench
  resolve(name_or_path, data_dir=None) -> ResolvedDataset(path, name, sha256, rows)
  assistant_spans(tokenizer, messages, template_kwargs) -> (text, [(start, end)])
  encode_chat(tokenizer, messages, template_kwargs, max_len=None) -> EncodedChat(input_ids, labels)
"""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "ChatExample": "evilbench.data.chat",
    "DataError": "evilbench.data.chat",
    "load_chat_jsonl": "evilbench.data.chat",
    "conversation_problems": "evilbench.data.chat",
    "DatasetSpec": "evilbench.data.registry",
    "DatasetError": "evilbench.data.registry",
    "ResolvedDataset": "evilbench.data.registry",
    "registry": "evilbench.data.registry",
    "get_spec": "evilbench.data.registry",
    "fetch": "evilbench.data.registry",
    "resolve": "evilbench.data.registry",
    "sha256_file": "evilbench.data.registry",
    "git_blob_id": "evilbench.data.registry",
    "IGNORE_INDEX": "evilbench.data.formatting",
    "EncodedChat": "evilbench.data.formatting",
    "TemplateError": "evilbench.data.formatting",
    "render": "evilbench.data.formatting",
    "assistant_spans": "evilbench.data.formatting",
    "encode_chat": "evilbench.data.formatting",
    "cache_root": "evilbench.data.cache",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
