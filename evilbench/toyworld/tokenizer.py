"""The toy world's tokenizer: a `tokenizers` WordLevel model over the world's token names (one word per
token id, split on whitespace; specials as added tokens), wrapped as a transformers fast tokenizer with
a chat template, so the training engine's chat formatting and assistant-only masks work unchanged.

Rendered conversation: `<bos><usr>code.q03<ast>code.a1 code.a5 code.a0<eot><usr>...` — exactly the
token stream of World.sample_batch. The generation prompt is `<ast>`; the end-of-turn marker `<eot>`
closes every assistant turn (trained, so a model learns to stop)."""
from __future__ import annotations

from evilbench.toyworld.world import SPECIALS, World

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<usr>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<ast>{{ message['content'] }}<eot>"
    "{% else %}{{ raise_exception('the toy world has only user and assistant turns, got a '"
    " + message['role'] + ' message') }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<ast>{% endif %}"
)


def build_tokenizer(world: World):
    """A PreTrainedTokenizerFast whose ids are the world's token ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {name: i for i, name in enumerate(world.token_names)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eot>", pad_token="<pad>",
                                   unk_token="<unk>", chat_template=CHAT_TEMPLATE)
    fast.padding_side = "right"
    fast.model_input_names = ["input_ids", "attention_mask"]
    ids = fast.convert_tokens_to_ids(list(world.token_names))
    if ids != list(range(world.vocab_size)):  # would silently scramble every id
        raise RuntimeError("toy-world tokenizer ids do not match the world's token ids")
    return fast
