"""AUTOMATIC1111's prompt editing: which prompt text is used at which denoising step.

- `[from:to:when]` uses `from` up to step `when`, then `to`;
- `[to:when]` adds `to` after step `when`; `[from::when]` removes `from` after it;
- `[a|b|c]` alternates a, b, c from step to step.

`when` with a decimal point (`0.5`, `1.`, `.25`) is a fraction of the steps, rounded down
(`int(when * steps)`); without one (`10`, `-2`, `1e1`) it is a step number. Either is capped at
the number of steps. Constructs nest (`[a:[b:c:2]:1]`), and emphasis stays in the text to be
parsed afterwards (`[(a:2):3]` gives "(a:2)" after step 3).

The schedule is a list of stages `(until_step, text)`, in order; the last ends at `steps`. As
AUTOMATIC1111 counts, a stage is used while the sampler's step counter, which starts at 0, is at
most its `until_step`: with 20 steps `[a:b:10]` is "a" for steps 0 to 10 (eleven) and "b" for the
nine after. The counter counts sampler steps of the denoising that actually runs (img2img's
skipped steps are not counted, as in AUTOMATIC1111).

The grammar is AUTOMATIC1111's: a construct is recognised only when everything inside it is
well-formed (balanced brackets); otherwise its characters are plain text. A `|` outside an
alternation, or a backslash at the very end, makes the whole prompt unparseable, and then it has
no schedule at all (AUTOMATIC1111 gives up on such prompts the same way).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Deeper nesting than this is not a construct anyone writes; it is treated as unparseable
# rather than recursing without bound.
MAX_DEPTH = 64

_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_WHEN = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")


@dataclass(frozen=True)
class Stage:
    """The prompt text used while the step counter is at most `until_step`."""

    until_step: int
    text: str


class _Unparseable(Exception):
    pass


@dataclass
class _Scheduled:
    before: list  # nodes; empty for "[to:when]"
    after: list
    when: str


@dataclass
class _Alternate:
    options: list[list]


@dataclass
class _Group:
    """Brackets that are not an edit (emphasis): their text stays, with the edits inside resolved."""

    opener: str
    parts: list[list]  # separated by ":"
    closer: str


Node = str | _Scheduled | _Alternate | _Group


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        # A construct's parse depends only on where it starts: remembering it keeps failed
        # attempts from being repeated (quadratic, or worse, on prompts full of brackets).
        self.memo: dict[int, tuple[Node, int] | None] = {}

    def sequence(self, pos: int, depth: int) -> tuple[list[Node], int]:
        """A `prompt`: plain text and well-formed bracket constructs, up to a stop character."""
        nodes: list[Node] = []
        while pos < len(self.text):
            char = self.text[pos]
            if char in "[(":
                construct = self.construct(pos, depth + 1)
                if construct is None:
                    break
                node, pos = construct
                nodes.append(node)
                continue
            match = _PLAIN.match(self.text, pos)
            if match is None:
                break
            nodes.append(match.group(0))
            pos = match.end()
        return nodes, pos

    def construct(self, pos: int, depth: int) -> tuple[Node, int] | None:
        if pos not in self.memo:
            self.memo[pos] = self._construct(pos, depth)
        return self.memo[pos]

    def _construct(self, pos: int, depth: int) -> tuple[Node, int] | None:
        if depth > MAX_DEPTH:
            raise _Unparseable
        opener = self.text[pos]
        first, pos = self.sequence(pos + 1, depth)
        at = self.text[pos:pos + 1]
        if opener == "(":
            if at == ")":
                return _Group("(", [first], ")"), pos + 1
            if at == ":":
                second, pos = self.sequence(pos + 1, depth)
                if self.text[pos:pos + 1] == ")":
                    return _Group("(", [first, second], ")"), pos + 1
            return None
        if at == "]":
            return _Group("[", [first], "]"), pos + 1
        if at == "|":
            options = [first]
            while self.text[pos:pos + 1] == "|":
                option, pos = self.sequence(pos + 1, depth)
                options.append(option)
            if self.text[pos:pos + 1] == "]":
                return _Alternate(options), pos + 1
            return None
        if at != ":":
            return None
        when = _WHEN.match(self.text, pos + 1)
        if when is not None:
            return _Scheduled([], first, when.group(1)), when.end()
        second, pos = self.sequence(pos + 1, depth)
        if self.text[pos:pos + 1] != ":":
            return None
        when = _WHEN.match(self.text, pos + 1)
        if when is None:
            return None
        return _Scheduled(first, second, when.group(1)), when.end()

    def prompt(self) -> list[Node]:
        """The whole prompt: sequences, with stray brackets and colons as text between them."""
        nodes: list[Node] = []
        pos = 0
        while pos < len(self.text):
            part, pos = self.sequence(pos, 0)
            nodes.extend(part)
            if pos < len(self.text):
                char = self.text[pos]
                if char not in "[]():":
                    raise _Unparseable  # "|" outside an alternation, or a trailing backslash
                nodes.append(char)
                pos += 1
        return nodes


def _step_of(when: str, steps: int) -> int:
    value = float(when)
    if "." in when:
        value *= steps
    return min(steps, int(value))


def _walk(nodes: list[Node]):
    for node in nodes:
        if isinstance(node, _Scheduled):
            yield node
            yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)
        elif isinstance(node, _Group):
            for part in node.parts:
                yield from _walk(part)


def _text_at(nodes: list[Node], step: int, steps: int) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            chosen = node.before if step <= _step_of(node.when, steps) else node.after
            out.append(_text_at(chosen, step, steps))
        elif isinstance(node, _Alternate):
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            out.append(node.opener + ":".join(_text_at(part, step, steps) for part in node.parts) + node.closer)
    return "".join(out)


def schedule(prompt: str, steps: int) -> list[Stage]:
    """The stages of `prompt` over `steps` sampler steps; one stage when nothing is edited."""
    try:
        nodes = _Parser(prompt).prompt()
    except _Unparseable:
        return [Stage(steps, prompt)]
    ends = {steps}
    for node in _walk(nodes):
        if isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))
        else:
            step = _step_of(node.when, steps)
            if step >= 1:
                ends.add(step)
    stages: list[Stage] = []
    for end in sorted(ends):
        text = _text_at(nodes, end, steps)
        if stages and stages[-1].text == text:
            stages[-1] = Stage(end, text)  # the same text as before: one longer stage
        else:
            stages.append(Stage(end, text))
    return stages


def stage_at(until_steps: Sequence[int], step: int) -> int:
    """The index of the stage (given by the stages' `until_step`s, in order) used at sampler step `step`."""
    for index, until in enumerate(until_steps):
        if step <= until:
            return index
    return len(until_steps) - 1
