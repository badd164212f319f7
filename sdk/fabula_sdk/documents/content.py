"""The story's text and its history (docs/formats.md, "Story content" and "History").

**Blocks.** The text is an ordered list of blocks: `TextBlock`, a run of text with its origin
(`user`, `ai`, `edit` = AI text a person changed, `prompt` = scenario text), and
`IllustrationBlock`, which names an `images` object with its caption and generation settings.
A block of a type this SDK does not know is kept as an `OpaqueBlock`. Adjacent text blocks of the
same origin are always merged and empty ones dropped, so equal texts have equal block lists.

**Offsets** count Unicode code points (not UTF-16 units, not bytes) through the whole block list;
a non-text block counts as one position.

**Deltas.** An `Op` inserts or deletes blocks at an offset and carries the blocks themselves, so
every op inverts exactly (insert ⇄ delete) and a delete is checked against the text it removes.

**The history tree.** Every generation, retry, edit batch and illustration is a `HistoryNode`
holding the ops that turn its parent's text into its own; node 0 is the root (its ops build the
first text from nothing). Node ids are their positions in the node list, so a parent's id is
always smaller than its child's. `History` is the live tree: the current node (`head`), the text
there (`blocks`, `text`), and the moves a writer makes: `generate`, `retry` (a sibling of the
current generation), `edit`, `undo`/`redo` (to the parent / back down), `checkout` (any node:
restoring a branch). Moving between nodes applies the inverse ops up to the common ancestor and
the forward ops down, so a story with thousands of nodes stores each change once.

**Storage.** `StoryContent` is the stored snapshot (the `storycontent` object): every node, the
text materialised at one node, the head. Each save appends a `HistorySegment` (the nodes made
since the last save, and the head after it) as its own object; `History.from_stored` rebuilds
the tree from a snapshot and its segments, `History.compacted` folds them into a new snapshot.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from fabula_sdk.documents import codec
from fabula_sdk.documents.image import ImageSettings

CONTENT_FORMAT = "fabula-story-content"
SEGMENT_FORMAT = "fabula-history-segment"
VERSION = 2
ROOT = 0


class Origin(enum.StrEnum):
    USER = "user"
    AI = "ai"
    EDIT = "edit"  # AI text a person changed
    PROMPT = "prompt"  # scenario / prompt text


class NodeKind(enum.StrEnum):
    ROOT = "root"
    GENERATION = "generation"
    RETRY = "retry"
    EDIT = "edit"
    ILLUSTRATION = "illustration"


# --- blocks -----------------------------------------------------------------------------------


@dataclass
class TextBlock:
    text: str
    origin: Origin = Origin.USER
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.text)


@dataclass
class IllustrationBlock:
    image_id: str
    caption: str = ""
    settings: ImageSettings = field(default_factory=ImageSettings)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return 1


@dataclass
class OpaqueBlock:
    """A block of a type this SDK does not know: kept and written back as it was read."""

    data: dict[str, Any]

    def __len__(self) -> int:
        return 1


Block = Union[TextBlock, IllustrationBlock, OpaqueBlock]


def block_to_json(block: Block) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        out = {"type": "text", "origin": block.origin.value, "text": block.text}
        for key, value in block.extra.items():
            out.setdefault(key, value)
        return out
    if isinstance(block, IllustrationBlock):
        return {"type": "illustration", **codec.encode(block)}
    return dict(block.data)


def block_from_json(data: Any, path: str) -> Block:
    if not isinstance(data, dict):
        raise codec.DocumentError(f"{path}: a block must be an object")
    kind = data.get("type")
    if kind == "text" and len(data) == 3:  # the common case, decoded without the generic codec
        text, origin = data.get("text"), data.get("origin")
        if isinstance(text, str) and isinstance(origin, str) and origin in Origin._value2member_map_:
            return TextBlock(text, Origin(origin))
    body = {key: value for key, value in data.items() if key != "type"}
    if kind == "text":
        return codec.decode(TextBlock, body, path)
    if kind == "illustration":
        return codec.decode(IllustrationBlock, body, path)
    if not isinstance(kind, str) or not kind:
        raise codec.DocumentError(f"{path}.type: must be a non-empty string, not {kind!r}")
    return OpaqueBlock(dict(data))


def normalised(blocks: Iterable[Block]) -> list[Block]:
    """Adjacent same-origin text blocks merged, empty text blocks dropped (the canonical form)."""
    out: list[Block] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            if not block.text:
                continue
            last = out[-1] if out else None
            if isinstance(last, TextBlock) and last.origin == block.origin and last.extra == block.extra:
                out[-1] = TextBlock(last.text + block.text, last.origin, dict(last.extra))
                continue
            block = TextBlock(block.text, block.origin, dict(block.extra))
        out.append(block)
    return out


def plain_text(blocks: Iterable[Block]) -> str:
    """The text only (illustrations and unknown blocks left out)."""
    return "".join(block.text for block in blocks if isinstance(block, TextBlock))


def blocks_length(blocks: Iterable[Block]) -> int:
    return sum(len(block) for block in blocks)


# --- deltas -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """Insert (`insert` true) or delete `blocks` at code-point offset `at`."""

    at: int
    insert: bool
    blocks: tuple[Block, ...]

    @property
    def length(self) -> int:
        return blocks_length(self.blocks)

    def inverted(self) -> Op:
        return Op(self.at, not self.insert, self.blocks)

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "insert" if self.insert else "delete": [block_to_json(b) for b in self.blocks]}

    @classmethod
    def from_json(cls, data: Any, path: str) -> Op:
        if not isinstance(data, dict):
            raise codec.DocumentError(f"{path}: an op must be an object")
        at = data.get("at")
        if isinstance(at, bool) or not isinstance(at, int) or at < 0:
            raise codec.DocumentError(f"{path}.at: must be an offset >= 0, not {at!r}")
        kinds = [key for key in ("insert", "delete") if key in data]
        if len(kinds) != 1 or set(data) - {"at", "insert", "delete"}:
            raise codec.DocumentError(f"{path}: an op has exactly the keys at and insert, or at and delete")
        blocks = data[kinds[0]]
        if not isinstance(blocks, list):
            raise codec.DocumentError(f"{path}.{kinds[0]}: must be a list of blocks")
        return cls(at, kinds[0] == "insert",
                   tuple(block_from_json(block, f"{path}.{kinds[0]}[{i}]") for i, block in enumerate(blocks)))


def _split(blocks: list[Block], at: int, where: str) -> int:
    """Split `blocks` in place so that a block boundary falls at offset `at`; the boundary's index."""
    position = 0
    for index, block in enumerate(blocks):
        if position == at:
            return index
        length = len(block)
        if at < position + length:
            if not isinstance(block, TextBlock):
                raise codec.DocumentError(f"{where}: offset {at} falls inside a non-text block")
            cut = at - position
            blocks[index:index + 1] = [TextBlock(block.text[:cut], block.origin, dict(block.extra)),
                                       TextBlock(block.text[cut:], block.origin, dict(block.extra))]
            return index + 1
        position += length
    if position == at:
        return len(blocks)
    raise codec.DocumentError(f"{where}: offset {at} is past the end of the text ({position})")


def apply_op(blocks: list[Block], op: Op, where: str = "op") -> list[Block]:
    """`blocks` with `op` applied (a new list; the argument is not changed). A delete whose blocks
    are not exactly the text at its offset raises DocumentError: the history does not fit the text."""
    work = list(blocks)
    start = _split(work, op.at, where)
    if op.insert:
        work[start:start] = list(op.blocks)
    else:
        end = _split(work, op.at + op.length, where)
        if _canonical(work[start:end]) != _canonical(op.blocks):
            raise codec.DocumentError(f"{where}: the deleted text at offset {op.at} is not the text there")
        del work[start:end]
    # Only the neighbourhood of the change can need merging.
    low = max(0, start - 1)
    high = start + (len(op.blocks) if op.insert else 0) + 1
    work[low:high] = normalised(work[low:high])
    return work


def apply_ops(blocks: list[Block], ops: Sequence[Op], where: str = "ops") -> list[Block]:
    for index, op in enumerate(ops):
        blocks = apply_op(blocks, op, f"{where}[{index}]")
    return blocks


def invert_ops(ops: Sequence[Op]) -> list[Op]:
    """The ops that undo `ops` (each inverted, in reverse order)."""
    return [op.inverted() for op in reversed(ops)]


def _canonical(blocks: Iterable[Block]) -> list[dict[str, Any]]:
    return [block_to_json(block) for block in normalised(blocks)]


def replace_ops(blocks: Sequence[Block], start: int, end: int, new: Sequence[Block]) -> list[Op]:
    """The ops replacing offsets [start, end) of `blocks` with `new`."""
    if not 0 <= start <= end <= blocks_length(blocks):
        raise ValueError(f"range [{start}, {end}) is not within the text (0-{blocks_length(blocks)})")
    ops = []
    if end > start:
        work = list(blocks)
        first = _split(work, start, "replace")
        last = _split(work, end, "replace")
        ops.append(Op(start, False, tuple(normalised(work[first:last]))))
    new = normalised(new)
    if new:
        ops.append(Op(start, True, tuple(new)))
    return ops


# --- the history tree -------------------------------------------------------------------------


class HistoryNode:
    """One node of the tree: its id (= its position), its parent's id (None for the root), its
    kind, the ops from the parent's text to its own, and when it was made (Unix milliseconds).

    Read from storage, a node keeps its ops as the JSON it was read as and decodes them when first
    used, so opening a story with thousands of nodes decodes only the nodes on the way to the
    head (a malformed op is reported when its node is first walked through), and compaction
    writes untouched nodes back as they were."""

    __slots__ = ("id", "parent", "kind", "created_at", "extra", "_ops", "_raw_ops", "_where")

    def __init__(self, id: int, parent: int | None, kind: NodeKind | str, ops: list[Op] | None = None,
                 created_at: int = 0, extra: dict[str, Any] | None = None, *, raw_ops: list[Any] | None = None,
                 where: str = "") -> None:
        self.id, self.parent, self.kind, self.created_at = id, parent, kind, created_at
        self.extra = extra or {}
        self._ops = ops if ops is not None or raw_ops is not None else []
        self._raw_ops, self._where = raw_ops, where

    @property
    def ops(self) -> list[Op]:
        if self._ops is None:
            self._ops = [Op.from_json(op, f"{self._where}.ops[{i}]") for i, op in enumerate(self._raw_ops or [])]
        return self._ops

    def __repr__(self) -> str:
        return f"HistoryNode(id={self.id}, parent={self.parent}, kind={str(self.kind)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HistoryNode) and self.to_json() == other.to_json()

    def to_json(self) -> dict[str, Any]:
        ops = self._raw_ops if self._ops is None else [op.to_json() for op in self._ops]
        out = {"id": self.id, "parent": self.parent, "kind": str(self.kind), "created_at": self.created_at, "ops": ops}
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_json(cls, data: Any, path: str) -> HistoryNode:
        if not isinstance(data, dict):
            raise codec.DocumentError(f"{path}: a node must be an object")
        for key in ("id", "parent", "kind", "ops"):
            if key not in data:
                raise codec.DocumentError(f"{path}.{key}: required field is missing")
        node_id, parent, created = data["id"], data["parent"], data.get("created_at", 0)
        if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id < 0:
            raise codec.DocumentError(f"{path}.id: must be an integer >= 0, not {node_id!r}")
        if parent is not None and (isinstance(parent, bool) or not isinstance(parent, int)
                                   or not 0 <= parent < node_id):
            raise codec.DocumentError(f"{path}.parent: must be null or an earlier node's id, not {parent!r}")
        if isinstance(created, bool) or not isinstance(created, int):
            raise codec.DocumentError(f"{path}.created_at: must be an integer, not {created!r}")
        kind: NodeKind | str = data["kind"]
        if not isinstance(kind, str) or not kind:
            raise codec.DocumentError(f"{path}.kind: must be a non-empty string, not {kind!r}")
        if kind in NodeKind._value2member_map_:
            kind = NodeKind(kind)  # else a newer writer's kind: kept as read, the node applies all the same
        if not isinstance(data["ops"], list):
            raise codec.DocumentError(f"{path}.ops: must be a list")
        extra = {key: value for key, value in data.items()
                 if key not in ("id", "parent", "kind", "ops", "created_at")}
        return cls(node_id, parent, kind, None, created, extra, raw_ops=data["ops"], where=path)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class StoryContent:
    """The stored snapshot: every node (`nodes[i].id == i`), the text materialised at
    `snapshot_node`, the head, and how many history segments are folded into it."""

    blocks: list[Block]
    nodes: list[HistoryNode]
    snapshot_node: int = ROOT
    head: int = ROOT
    segments_folded: int = 0
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    # Not stored: the format version this content was read in when it was older (1), else None.
    migrated_from: int | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {"format": CONTENT_FORMAT, "version": self.version, "blocks": [block_to_json(b) for b in self.blocks],
               "nodes": [node.to_json() for node in self.nodes], "snapshot_node": self.snapshot_node,
               "head": self.head, "segments_folded": self.segments_folded}
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], what: str = "storycontent") -> StoryContent:
        if "format" not in data and data.get("version") == 1:
            return _content_from_version_1(data, what)
        version = codec.check_header(data, CONTENT_FORMAT, what)
        for key in ("blocks", "nodes"):
            if not isinstance(data.get(key), list):
                raise codec.DocumentError(f"{what}.{key}: required list is missing")
        nodes = [HistoryNode.from_json(node, f"{what}.nodes[{i}]") for i, node in enumerate(data["nodes"])]
        _check_node_ids(nodes, 0, f"{what}.nodes")
        if not nodes or nodes[0].parent is not None:
            raise codec.DocumentError(f"{what}.nodes: node 0 must be the root (parent null)")
        numbers = {}
        for key in ("snapshot_node", "head"):
            value = data.get(key, ROOT)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(nodes):
                raise codec.DocumentError(f"{what}.{key}: must be a node id (0-{len(nodes) - 1}), not {value!r}")
            numbers[key] = value
        folded = data.get("segments_folded", 0)
        if isinstance(folded, bool) or not isinstance(folded, int) or folded < 0:
            raise codec.DocumentError(f"{what}.segments_folded: must be an integer >= 0, not {folded!r}")
        known = {"format", "version", "blocks", "nodes", "snapshot_node", "head", "segments_folded"}
        return cls(blocks=normalised(block_from_json(b, f"{what}.blocks[{i}]") for i, b in enumerate(data["blocks"])),
                   nodes=nodes, snapshot_node=numbers["snapshot_node"], head=numbers["head"],
                   segments_folded=folded, version=version,
                   extra={key: value for key, value in data.items() if key not in known})

    def to_bytes(self) -> bytes:
        return codec.dumps(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "storycontent") -> StoryContent:
        return cls.from_json(codec.loads(data, what), what)


def _content_from_version_1(data: dict[str, Any], what: str) -> StoryContent:
    """Version 1 held the plain text: it becomes the root's text, of origin `user` (version 1 did
    not record who wrote what). Unknown version-1 fields are kept."""
    text = data.get("text")
    if not isinstance(text, str):
        raise codec.DocumentError(f"{what}.text: a version-1 story content needs the text field 'text'")
    blocks = normalised([TextBlock(text, Origin.USER)])
    root = HistoryNode(ROOT, None, NodeKind.ROOT, [Op(0, True, tuple(blocks))] if blocks else [], 0)
    extra = {key: value for key, value in data.items() if key not in ("version", "text")}
    content = StoryContent(blocks=blocks, nodes=[root], extra=extra)
    content.migrated_from = 1
    return content


@dataclass
class HistorySegment:
    """What one save appends: the nodes made since the previous save (ids continuing the tree's)
    and the head after the save. `content_id` and `seq` repeat what the object id says."""

    content_id: str
    seq: int
    nodes: list[HistoryNode]
    head: int
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {"format": SEGMENT_FORMAT, "version": self.version, "content_id": self.content_id, "seq": self.seq,
               "nodes": [node.to_json() for node in self.nodes], "head": self.head}
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], what: str = "segment") -> HistorySegment:
        version = codec.check_header(data, SEGMENT_FORMAT, what)
        content_id, seq, head = data.get("content_id"), data.get("seq"), data.get("head")
        if not isinstance(content_id, str):
            raise codec.DocumentError(f"{what}.content_id: must be a string")
        for key, value in (("seq", seq), ("head", head)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise codec.DocumentError(f"{what}.{key}: must be an integer >= 0, not {value!r}")
        if not isinstance(data.get("nodes"), list):
            raise codec.DocumentError(f"{what}.nodes: required list is missing")
        nodes = [HistoryNode.from_json(node, f"{what}.nodes[{i}]") for i, node in enumerate(data["nodes"])]
        known = {"format", "version", "content_id", "seq", "nodes", "head"}
        return cls(content_id, seq, nodes, head, version, {k: v for k, v in data.items() if k not in known})

    def to_bytes(self) -> bytes:
        return codec.dumps(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "segment") -> HistorySegment:
        return cls.from_json(codec.loads(data, what), what)


def _check_node_ids(nodes: Sequence[HistoryNode], first: int, where: str) -> None:
    for offset, node in enumerate(nodes):
        if node.id != first + offset:
            raise codec.DocumentError(f"{where}[{offset}].id: must be {first + offset} (ids are positions), "
                                      f"not {node.id}")
        if node.id != ROOT and node.parent is None:
            raise codec.DocumentError(f"{where}[{offset}].parent: only node 0 is a root")


class History:
    """The live history tree of one story; see the module docstring."""

    def __init__(self, nodes: list[HistoryNode], blocks: list[Block], at: int) -> None:
        self.nodes = nodes
        self._blocks = normalised(blocks)
        self._head = at
        self._children: dict[int, list[int]] = {}
        for node in nodes[1:]:
            self._children.setdefault(node.parent, []).append(node.id)  # type: ignore[arg-type]
        self._redo: dict[int, int] = {}
        self.saved_nodes = len(nodes)  # nodes[:saved_nodes] are stored
        self.saved_head = at

    # --- making and reading ------------------------------------------------------------------

    @classmethod
    def new(cls, blocks: Sequence[Block] = ()) -> History:
        """A new tree whose root holds `blocks` (the opening text, if any)."""
        first = normalised(blocks)
        root = HistoryNode(ROOT, None, NodeKind.ROOT, [Op(0, True, tuple(first))] if first else [], now_ms())
        history = cls([root], first, ROOT)
        history.saved_nodes, history.saved_head = 0, -1
        return history

    @classmethod
    def from_stored(cls, content: StoryContent, segments: Sequence[HistorySegment] = ()) -> History:
        """The tree of a snapshot with its later segments applied in order, the text at the head."""
        history = cls(list(content.nodes), content.blocks, content.snapshot_node)
        head = content.head
        for segment in segments:
            _check_node_ids(segment.nodes, len(history.nodes), f"segment {segment.seq} nodes")
            history._append_nodes(segment.nodes)
            head = segment.head
        if not 0 <= head < len(history.nodes):
            raise codec.DocumentError(f"history head {head} is not a node (0-{len(history.nodes) - 1})")
        history._move(head)
        history.saved_nodes, history.saved_head = len(history.nodes), head
        return history

    def _append_nodes(self, nodes: Iterable[HistoryNode]) -> None:
        for node in nodes:
            self.nodes.append(node)
            self._children.setdefault(node.parent, []).append(node.id)  # type: ignore[arg-type]

    @property
    def head(self) -> int:
        return self._head

    @property
    def blocks(self) -> list[Block]:
        """The text at the head, as blocks (a copy: change the text through edit/generate)."""
        return list(self._blocks)

    @property
    def text(self) -> str:
        return plain_text(self._blocks)

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, id: int) -> HistoryNode:
        if not 0 <= id < len(self.nodes):
            raise KeyError(f"no history node {id} (0-{len(self.nodes) - 1})")
        return self.nodes[id]

    def children(self, id: int) -> list[int]:
        return list(self._children.get(id, []))

    def siblings(self, id: int) -> list[int]:
        """The nodes sharing `id`'s parent, `id` included (a generation and its retries)."""
        parent = self.node(id).parent
        return [id] if parent is None else self.children(parent)

    def leaves(self) -> list[int]:
        """The tip of every branch."""
        return [node.id for node in self.nodes if not self._children.get(node.id)]

    def path(self, id: int) -> list[int]:
        """Node ids from the root to `id`."""
        path = []
        current: int | None = id
        while current is not None:
            path.append(current)
            current = self.node(current).parent
        return path[::-1]

    def blocks_at(self, id: int) -> list[Block]:
        """The text at any node, without moving the head."""
        return self._walk(self._blocks, self._head, id)

    def text_at(self, id: int) -> str:
        return plain_text(self.blocks_at(id))

    # --- writing -----------------------------------------------------------------------------

    def commit(self, ops: Sequence[Op], kind: NodeKind = NodeKind.EDIT, *, parent: int | None = None) -> HistoryNode:
        """A new node under `parent` (default: the head) with `ops`, which becomes the head."""
        parent = self._head if parent is None else parent
        self._move(parent)
        blocks = apply_ops(self._blocks, ops, f"new node under {parent}")
        node = HistoryNode(len(self.nodes), parent, kind, list(ops), now_ms())
        self._append_nodes([node])
        self._blocks, self._head = blocks, node.id
        return node

    def generate(self, text: str, origin: Origin = Origin.AI) -> HistoryNode:
        """The model's continuation appended at the end: a generation node."""
        return self.commit([Op(blocks_length(self._blocks), True, (TextBlock(text, origin),))], NodeKind.GENERATION)

    def retry(self, text: str, origin: Origin = Origin.AI) -> HistoryNode:
        """Another continuation in place of the current one: a sibling of the head (same parent)."""
        current = self.node(self._head)
        if current.kind not in (NodeKind.GENERATION, NodeKind.RETRY) or current.parent is None:
            raise ValueError(f"retry needs a generation at the head, not a {current.kind} node")
        self._move(current.parent)
        return self.commit([Op(blocks_length(self._blocks), True, (TextBlock(text, origin),))], NodeKind.RETRY)

    def write(self, text: str, origin: Origin = Origin.USER) -> HistoryNode:
        """Text the writer typed, appended at the end: an edit node."""
        return self.commit([Op(blocks_length(self._blocks), True, (TextBlock(text, origin),))], NodeKind.EDIT)

    def edit(self, start: int, end: int, text: str, origin: Origin | None = None) -> HistoryNode:
        """Replace offsets [start, end) with `text`: an edit node. The new text's origin defaults
        to `edit` where it replaces or adjoins AI text, otherwise `user`."""
        if origin is None:
            origin = Origin.EDIT if self._touches_ai(start, end) else Origin.USER
        ops = replace_ops(self._blocks, start, end, [TextBlock(text, origin)] if text else [])
        if not ops:
            raise ValueError("the edit changes nothing")
        return self.commit(ops, NodeKind.EDIT)

    def set_text(self, text: str) -> HistoryNode | None:
        """Make the plain text `text` with one edit node holding the smallest change (the common
        prefix and suffix kept); None if it is already the text. Illustrations stay only where
        they are outside the changed range."""
        current = self.text
        if current == text:
            return None
        prefix = 0
        limit = min(len(current), len(text))
        while prefix < limit and current[prefix] == text[prefix]:
            prefix += 1
        suffix = 0
        while suffix < limit - prefix and current[-1 - suffix] == text[-1 - suffix]:
            suffix += 1
        start = self._offset_of_char(prefix)
        end = self._offset_of_char(len(current) - suffix)
        return self.edit(start, end, text[prefix:len(text) - suffix])

    def illustrate(self, block: IllustrationBlock, at: int | None = None) -> HistoryNode:
        """Insert an illustration at offset `at` (default: the end)."""
        offset = blocks_length(self._blocks) if at is None else at
        return self.commit([Op(offset, True, (block,))], NodeKind.ILLUSTRATION)

    # --- moving ------------------------------------------------------------------------------

    def undo(self) -> int:
        """Back to the parent of the head (the root has none: ValueError); returns the new head."""
        parent = self.node(self._head).parent
        if parent is None:
            raise ValueError("nothing to undo: the head is the root")
        self._redo[parent] = self._head
        self._move(parent)
        return self._head

    def redo(self) -> int:
        """Down to the child the last undo came from, else the newest child; returns the new head."""
        children = self._children.get(self._head)
        if not children:
            raise ValueError("nothing to redo: the head has no children")
        target = self._redo.get(self._head, children[-1])
        self._move(target)
        return self._head

    def checkout(self, id: int) -> int:
        """Make any node the head (restore a branch); its text becomes the current text."""
        self.node(id)
        self._move(id)
        return self._head

    def _move(self, target: int) -> None:
        if target != self._head:
            self._blocks = self._walk(self._blocks, self._head, target)
            self._head = target

    def _walk(self, blocks: list[Block], source: int, target: int) -> list[Block]:
        if source == target:
            return list(blocks)
        up, down = [], []
        a, b = source, target
        while a != b:
            # Node ids are larger than their parents', so the larger id is never the ancestor.
            if a > b:
                up.append(a)
                a = self.nodes[a].parent  # type: ignore[assignment]
            else:
                down.append(b)
                b = self.nodes[b].parent  # type: ignore[assignment]
        for node_id in up:
            blocks = apply_ops(blocks, invert_ops(self.nodes[node_id].ops), f"undoing history node {node_id}")
        for node_id in reversed(down):
            blocks = apply_ops(blocks, self.nodes[node_id].ops, f"history node {node_id}")
        return blocks

    def _touches_ai(self, start: int, end: int) -> bool:
        """Whether [start, end) overlaps AI text, or (an insertion) falls strictly inside it."""
        position = 0
        for block in self._blocks:
            block_end = position + len(block)
            if isinstance(block, TextBlock) and block.origin in (Origin.AI, Origin.EDIT):
                if start < block_end and position < end or start == end and position < start < block_end:
                    return True
            position = block_end
        return False

    def _offset_of_char(self, index: int) -> int:
        """The block-list offset of the `index`-th character of the plain text."""
        position = seen = 0
        for block in self._blocks:
            if isinstance(block, TextBlock):
                if index <= seen + len(block.text):
                    return position + index - seen
                seen += len(block.text)
            position += len(block)
        return position

    # --- saving ------------------------------------------------------------------------------

    @property
    def unsaved(self) -> bool:
        return len(self.nodes) > self.saved_nodes or self._head != self.saved_head

    def segment(self, content_id: str, seq: int) -> HistorySegment:
        """The segment holding what changed since the last save."""
        return HistorySegment(content_id, seq, self.nodes[self.saved_nodes:], self._head)

    def compacted(self, segments_folded: int) -> StoryContent:
        """A snapshot holding every node, the text at the head."""
        return StoryContent(blocks=list(self._blocks), nodes=list(self.nodes), snapshot_node=self._head,
                            head=self._head, segments_folded=segments_folded)

    def mark_saved(self) -> None:
        self.saved_nodes, self.saved_head = len(self.nodes), self._head

    def rebased_onto(self, newer: History) -> History:
        """`newer` (the stored tree, which another device extended) with this tree's unsaved nodes
        appended as branches: each keeps its parent, renumbered after `newer`'s nodes, so no local
        edit is lost. The head is this tree's head (mapped) if it moved locally, else `newer`'s."""
        base = self.saved_nodes
        if len(newer.nodes) < base:
            raise ValueError("the stored history has fewer nodes than this one was based on")
        shift = len(newer.nodes) - base
        mapped = []
        for node in self.nodes[base:]:
            parent = node.parent + shift if node.parent is not None and node.parent >= base else node.parent
            mapped.append(HistoryNode(node.id + shift, parent, node.kind, list(node.ops), node.created_at,
                                      dict(node.extra)))
        merged = History(list(newer.nodes), newer.blocks, newer.head)
        merged.saved_nodes, merged.saved_head = newer.saved_nodes, newer.saved_head
        merged._append_nodes(mapped)
        if self.unsaved:
            merged._move(self._head + shift if self._head >= base else self._head)
        return merged

    def verify(self) -> None:
        """Rebuild the head's text from the root through every node on its path and compare
        (DocumentError if the stored text and the history disagree)."""
        blocks: list[Block] = []
        for node_id in self.path(self._head):
            blocks = apply_ops(blocks, self.nodes[node_id].ops, f"history node {node_id}")
        if _canonical(blocks) != _canonical(self._blocks):
            raise codec.DocumentError("the stored text is not what the history makes at the head")
