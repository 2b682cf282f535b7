"""Chat data: conversation formats, chat templates with special tokens, and masked training examples.

``read_conversations(path)`` -> conversations in one shape; ``load_chat_template(source)`` -> a
:class:`ChatTemplate` whose ``encode`` gives token ids and labels (assistant tokens only);
``add_chat_tokens`` adds the template's special tokens to a tokenizer.
"""

from vesper_data.chat.formats import SkipCounter, looks_like_chat, normalize_record, read_conversations
from vesper_data.chat.template import (CHECKPOINT_KEY, DEFAULT_TEMPLATE, ChatTemplate, Message, add_chat_tokens,
                                       default_template, load_chat_template)

__all__ = ["CHECKPOINT_KEY", "ChatTemplate", "DEFAULT_TEMPLATE", "Message", "SkipCounter", "add_chat_tokens",
           "default_template", "load_chat_template", "looks_like_chat", "normalize_record", "read_conversations"]
