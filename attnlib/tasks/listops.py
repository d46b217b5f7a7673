"""ListOps by the rules of Long Range Arena (Tay et al., 2021).

Source: Y. Tay et al., "Long Range Arena: A Benchmark for Efficient Transformers", ICLR 2021
(arXiv:2011.04006), Section 3.1, and its released generator ``lra_benchmarks/data/listops.py``
(google-research/long-range-arena), which follows N. Nangia and S. Bowman, "ListOps: A Diagnostic
Dataset for Latent Tree Learning", NAACL SRW 2018. The rules this module keeps:

* operators ``MAX``, ``MIN``, ``MED`` (the median, rounded down to an int as ``int(np.median)``)
  and ``SM`` (the sum modulo 10), over the digits 0-9; an operator opens with its bracket
  (the token ``[MAX``) and closes with ``]``;
* a node at depth ``< max_depth`` is an operator with probability 0.25 (``VALUE_P``), otherwise a
  digit; a node at ``max_depth`` is a digit; an operator has ``2 .. max_args`` arguments, each a
  node one level deeper; the root is drawn at depth 1, as LRA does;
* the length is the number of tokens (a digit 1, an operator 2 plus its arguments); LRA keeps a
  tree only if ``min_length < length < max_length`` (here ``max_length = seq_len + 1``: the
  expression fits the sequence) and draws again otherwise;
* the label is the value of the expression, 0-9 (ten classes).

LRA's defaults are ``max_depth = 10``, ``max_args = 10``, lengths 500-2000. The tokens are
written without the round parentheses of LRA's ``to_string`` (its input pipeline removes them),
and the sequence is padded at the end with ``PAD`` to ``seq_len`` tokens.
"""

from __future__ import annotations

import torch

from ._common import UniformStream, check_batch_size, check_positive_int, make_generator

__all__ = ["OPERATORS", "TOKENS", "PAD", "VOCAB_SIZE", "listops", "evaluate", "encode", "decode"]

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUE_P = 0.25  # LRA's probability that a node above max_depth is an operator
PAD = 0
TOKENS = ("<pad>", *(str(digit) for digit in range(10)), *OPERATORS, END)  # id -> token
IDS = {token: index for index, token in enumerate(TOKENS)}
VOCAB_SIZE = len(TOKENS)
MAX_TRIES = 100_000


def _apply(operator: str, arguments: list[int]) -> int:
    if operator == "[MIN":
        return min(arguments)
    if operator == "[MAX":
        return max(arguments)
    if operator == "[MED":  # int(np.median(arguments)), as LRA
        ordered = sorted(arguments)
        middle = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[middle]
        return int((ordered[middle - 1] + ordered[middle]) / 2)
    return sum(arguments) % 10  # "[SM"


def evaluate(expression) -> int:
    """The value of a ListOps expression: a string like ``"[MAX 2 9 [MIN 4 7 ] 0 ]"`` or a list of tokens.

    Padding tokens (``<pad>``) after the expression are ignored. ValueError for a malformed expression.
    """
    tokens = expression.split() if isinstance(expression, str) else list(expression)
    while tokens and tokens[-1] == TOKENS[PAD]:
        tokens.pop()
    if not tokens:
        raise ValueError("expression must hold at least one token, got none")
    stack: list[tuple[str, list[int]]] = []
    result = None
    for position, token in enumerate(tokens):
        if result is not None:
            raise ValueError(f"expression must end after its outermost operator closes; token {position} is {token!r}")
        if token in OPERATORS:
            stack.append((token, []))
        elif token == END:
            if not stack:
                raise ValueError(f"expression has a ']' without an operator at token {position}")
            operator, arguments = stack.pop()
            if not arguments:
                raise ValueError(f"expression closes operator {operator} without arguments at token {position}")
            value = _apply(operator, arguments)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        elif token.isdigit() and len(token) == 1:
            if stack:
                stack[-1][1].append(int(token))
            elif len(tokens) == 1:
                result = int(token)
            else:
                raise ValueError(f"expression has a digit outside every operator at token {position}")
        else:
            raise ValueError(f"expression has an unknown token {token!r} at position {position}; known: {TOKENS[1:]}")
    if result is None:
        raise ValueError(f"expression leaves {len(stack)} operator(s) open")
    return result


def encode(expression, seq_len: int) -> torch.Tensor:
    """Token ids ``(seq_len,)`` of an expression (string or token list), padded with ``PAD``."""
    check_positive_int("seq_len", seq_len)
    tokens = expression.split() if isinstance(expression, str) else list(expression)
    if len(tokens) > seq_len:
        raise ValueError(f"seq_len must hold the expression's {len(tokens)} tokens, got {seq_len}")
    unknown = [token for token in tokens if token not in IDS]
    if unknown:
        raise ValueError(f"expression has unknown tokens {unknown}; known: {TOKENS[1:]}")
    ids = torch.full((seq_len,), PAD, dtype=torch.int64)
    ids[: len(tokens)] = torch.tensor([IDS[token] for token in tokens], dtype=torch.int64)
    return ids


def decode(ids: torch.Tensor) -> str:
    """The expression of a row of token ids, without its padding."""
    return " ".join(TOKENS[i] for i in ids.tolist() if i != PAD)


def _tree(
    stream: UniformStream, depth: int, max_depth: int, max_args: int, budget: int, operators=OPERATORS
) -> list[str] | None:
    """LRA's ``generate_tree`` as a token list, or None once it is longer than ``budget`` tokens."""
    if depth < max_depth and stream.uniform() <= VALUE_P:
        num_args = 2 + stream.below(max_args - 1)  # random.randint(2, max_args)
        arguments = []
        length = 2
        for _ in range(num_args):
            sub = _tree(stream, depth + 1, max_depth, max_args, budget - length, operators)
            if sub is None:
                return None
            arguments += sub
            length += len(sub)
        operator = operators[stream.below(len(operators))]
        return [operator, *arguments, END] if length <= budget else None
    return [str(stream.below(10))] if budget >= 1 else None


def listops(
    batch: int,
    seq_len: int,
    *,
    max_depth: int = 10,
    max_args: int = 10,
    min_length: int | None = None,
    operators: tuple[str, ...] = OPERATORS,
    generator=0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` ListOps expressions: ``(inputs (batch, seq_len) int64, labels (batch,) int64 in 0..9)``.

    Keeps the trees with ``min_length < length <= seq_len`` (LRA's rule with ``max_length =
    seq_len + 1``); ``min_length`` defaults to ``seq_len // 4`` (LRA: 500 of 2000).
    ``operators``: the operators drawn from, LRA's four by default; a subset such as
    ``("[MIN", "[MAX")`` keeps the nesting and drops the arithmetic (``[SM`` and ``[MED``).
    ``generator``: a CPU ``torch.Generator`` or an int seed (the same seed gives the same batch).
    """
    check_batch_size(batch)
    check_positive_int("seq_len", seq_len)
    check_positive_int("max_depth", max_depth)
    check_positive_int("max_args", max_args)
    if max_args < 2:
        raise ValueError(f"max_args must be at least 2 (an operator has 2 .. max_args arguments), got {max_args}")
    if not isinstance(operators, (tuple, list)) or not operators or any(op not in OPERATORS for op in operators):
        raise ValueError(f"operators must be a non-empty tuple drawn from {OPERATORS}, got {operators!r}")
    if min_length is None:
        min_length = seq_len // 4
    if isinstance(min_length, bool) or not isinstance(min_length, int) or not 0 <= min_length < seq_len:
        raise ValueError(f"min_length must be an int in 0 .. seq_len - 1 = {seq_len - 1}, got {min_length!r}")
    if max_depth == 1 and min_length >= 1:
        raise ValueError(f"max_depth=1 gives single digits only (length 1): min_length must be 0, got {min_length}")
    stream = UniformStream(make_generator(generator))
    inputs = torch.full((batch, seq_len), PAD, dtype=torch.int64)
    labels = torch.empty(batch, dtype=torch.int64)
    for row in range(batch):
        for _ in range(MAX_TRIES):
            tokens = _tree(stream, 1, max_depth, max_args, seq_len, tuple(operators))
            if tokens is not None and len(tokens) > min_length:
                break
        else:
            raise ValueError(
                f"no tree with {min_length} < length <= {seq_len} in {MAX_TRIES} draws for max_depth={max_depth}, "
                f"max_args={max_args}: raise max_depth or max_args, or lower min_length"
            )
        inputs[row, : len(tokens)] = torch.tensor([IDS[token] for token in tokens])
        labels[row] = evaluate(tokens)
    return inputs, labels
