"""Prompt templates and tokenisation (upstream ``get_openvla_prompt`` / ``predict_action``).

The template is chosen by configuration (``PolicyOptions.prompt_template``), not by a substring of
the checkpoint path as upstream's scripts do.
"""
from __future__ import annotations

from pathlib import Path

from openvla_ros.defaults import MAX_INSTRUCTION_CHARS

from .api import CheckpointError, InvalidInstructionError

V01_SYSTEM_PROMPT = ('A chat between a curious user and an artificial intelligence assistant. '
                     "The assistant gives helpful, detailed, and polite answers to the user's questions.")
TEMPLATES = {
    'openvla': 'In: What action should the robot take to {instruction}?\nOut:',
    'v01': V01_SYSTEM_PROMPT + ' USER: What action should the robot take to {instruction}? ASSISTANT:',
}
# At training the action tokens followed "Out: "; the SentencePiece piece for that lone space is
# 29871, and upstream appends it at inference when the prompt does not already end with it.
SPACE_TOKEN_ID = 29871


def validate_instruction(instruction, max_chars: int = MAX_INSTRUCTION_CHARS) -> str:
    """``instruction`` if a model may be prompted with it, else :class:`InvalidInstructionError`.

    The one character-level check, used by the engine, the server and vla_node: a ``str`` (not
    ``bytes``: the caller decodes, so an undecodable byte is its error to report), not empty or
    whitespace only, at most ``max_chars`` characters, and encodable as UTF-8 (a lone surrogate, e.g. from a JSON ``"\\ud800"`` escape, is not).
    Whether the prompt fits the model's context is a token count, checked by the policy
    (``Policy.check_instruction``).
    """
    if not isinstance(instruction, str):
        raise InvalidInstructionError(f'instruction must be a string, got {type(instruction).__name__}')
    if not instruction.strip():
        raise InvalidInstructionError('instruction is empty')
    if len(instruction) > max_chars:
        raise InvalidInstructionError(f'instruction has {len(instruction)} characters; the limit is '
                                      f'{max_chars}')
    try:
        instruction.encode('utf-8')
    except UnicodeEncodeError as exc:
        raise InvalidInstructionError(f'instruction contains an unpaired surrogate at character '
                                      f'{exc.start}') from None
    return instruction


def build_prompt(instruction: str, template: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f'unknown prompt template {template!r}; choose one of {sorted(TEMPLATES)}')
    return TEMPLATES[template].format(instruction=instruction.lower())


class PromptTokenizer:
    """The checkpoint's ``tokenizer.json`` (Llama-2 + ``<PAD>``) through the ``tokenizers`` library."""

    def __init__(self, tokenizer_file: Path):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # the library raises a bare Exception on malformed files
            raise CheckpointError(f'cannot read {tokenizer_file.name} in {tokenizer_file.parent}: '
                                  f'{exc}') from None
        pad = self._tok.token_to_id('<PAD>')
        self.pad_token_id = 32000 if pad is None else pad

    def encode(self, prompt: str) -> list[int]:
        """Token ids with BOS (from the tokenizer's post-processor) and 29871 appended if absent."""
        ids = list(self._tok.encode(prompt).ids)
        if not ids or ids[-1] != SPACE_TOKEN_ID:
            ids.append(SPACE_TOKEN_ID)
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` without special tokens (BOS, PAD)."""
        return self._tok.decode(list(ids))
