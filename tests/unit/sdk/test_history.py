"""The history tree of a story's content: deltas that apply and invert exactly, generation, retry
siblings, undo/redo, restoring branches, and compaction that keeps every node."""

from __future__ import annotations

import random

import pytest

from fabula_sdk.documents import DocumentError, History, HistorySegment, IllustrationBlock, NodeKind, Op, Origin
from fabula_sdk.documents import StoryContent, TextBlock
from fabula_sdk.documents.content import apply_op, apply_ops, invert_ops, normalised, replace_ops


def _story() -> History:
    return History.new([TextBlock("The keeper climbed the stairs.", Origin.PROMPT)])


def test_generation_appends_ai_text_as_a_child():
    history = _story()
    node = history.generate(" Below, the sea was black.")
    assert node.parent == 0 and node.kind == NodeKind.GENERATION and history.head == node.id
    assert history.text == "The keeper climbed the stairs. Below, the sea was black."
    assert [(block.text, block.origin) for block in history.blocks] == [
        ("The keeper climbed the stairs.", Origin.PROMPT), (" Below, the sea was black.", Origin.AI)]


def test_retry_makes_a_sibling_and_both_branches_stay():
    history = _story()
    first = history.generate(" A gull cried.")
    second = history.retry(" The lamp flickered.")
    assert second.kind == NodeKind.RETRY and second.parent == first.parent
    assert history.siblings(second.id) == [first.id, second.id]
    assert history.text.endswith("The lamp flickered.")
    assert history.text_at(first.id).endswith("A gull cried.")
    assert sorted(history.leaves()) == [first.id, second.id]
    # A retry of a retry is one more sibling, not a child.
    third = history.retry(" Nothing moved.")
    assert third.parent == first.parent and len(history.siblings(first.id)) == 3


def test_retry_needs_a_generation_at_the_head():
    history = _story()
    history.write(" I typed this.")
    with pytest.raises(ValueError, match="retry needs a generation"):
        history.retry(" no")


def test_undo_and_redo_walk_the_tree():
    history = _story()
    one = history.generate(" One.")
    two = history.generate(" Two.")
    assert history.undo() == one.id and history.text.endswith("One.")
    assert history.undo() == 0 and history.text == "The keeper climbed the stairs."
    with pytest.raises(ValueError, match="nothing to undo"):
        history.undo()
    assert history.redo() == one.id and history.redo() == two.id
    assert history.text.endswith("One. Two.")
    with pytest.raises(ValueError, match="nothing to redo"):
        history.redo()


def test_redo_returns_down_the_branch_the_undo_came_from():
    history = _story()
    first = history.generate(" A.")
    history.retry(" B.")
    history.checkout(first.id)
    history.undo()
    assert history.redo() == first.id  # not the newer sibling


def test_checkout_restores_any_branch():
    history = _story()
    left = history.generate(" Left.")
    deeper = history.generate(" Deeper left.")
    history.checkout(0)
    right = history.generate(" Right.")
    assert right.parent == 0 and history.text.endswith("Right.")
    history.checkout(deeper.id)
    assert history.text == "The keeper climbed the stairs. Left. Deeper left."
    assert history.path(deeper.id) == [0, left.id, deeper.id]
    history.verify()


def test_edits_mark_changed_ai_text_as_edit_and_typed_text_as_user():
    history = _story()
    history.generate(" The sea was black.")
    start = history.text.index("black")
    history.edit(start, start + len("black"), "grey")
    assert ("grey", Origin.EDIT) in [(block.text, block.origin) for block in history.blocks]
    history.write(" I add this.")
    assert history.blocks[-1].origin == Origin.USER
    assert history.text == "The keeper climbed the stairs. The sea was grey. I add this."


def test_set_text_stores_only_the_change():
    history = _story()
    history.generate(" " + "word " * 2000)
    node = history.set_text(history.text.replace("stairs", "steps"))
    assert node is not None and len(node.ops) == 2
    assert sum(op.length for op in node.ops) < 20
    assert history.set_text(history.text) is None


def test_illustration_blocks_count_as_one_position():
    history = _story()
    picture = IllustrationBlock(image_id="img-1", caption="The lighthouse")
    history.illustrate(picture, at=3)
    assert history.text == "The keeper climbed the stairs."  # illustrations are not text
    assert isinstance(history.blocks[1], IllustrationBlock)
    history.edit(5, 6, "K")  # offset 5 is the "k" of keeper: the illustration shifted it by one
    assert history.text == "The Keeper climbed the stairs."
    with pytest.raises(DocumentError, match="inside a non-text block|not the text"):
        apply_op(history.blocks, Op(3, False, (TextBlock("x"),)))


def test_ops_invert_exactly():
    rng = random.Random(7)
    blocks = normalised([TextBlock("Hello there, ", Origin.USER), TextBlock("general.", Origin.AI)])
    for _ in range(300):
        length = sum(len(block) for block in blocks)
        start = rng.randrange(length + 1)
        end = rng.randrange(start, min(length, start + 6) + 1)
        new = [TextBlock(rng.choice(["", "x", "yz", "é🙂"]), rng.choice(list(Origin)))]
        ops = replace_ops(blocks, start, end, new)
        after = apply_ops(blocks, ops)
        assert apply_ops(after, invert_ops(ops)) == blocks
        blocks = after


def test_offsets_count_code_points():
    blocks = [TextBlock("a🙂b")]
    assert apply_op(blocks, Op(2, True, (TextBlock("X"),))) == [TextBlock("a🙂Xb")]


def test_a_delete_that_does_not_match_the_text_is_refused():
    with pytest.raises(DocumentError, match="not the text there"):
        apply_op([TextBlock("abc")], Op(0, False, (TextBlock("x"),)))
    with pytest.raises(DocumentError, match="past the end"):
        apply_op([TextBlock("abc")], Op(9, True, (TextBlock("x"),)))


def test_segments_and_compaction_keep_every_node():
    history = _story()
    for round in range(20):
        history.generate(f" Gen {round}.")
        if round % 3 == 0:
            history.retry(f" Retry {round}.")
        if round % 5 == 0:
            history.undo()
    content = history.compacted(0)
    history.mark_saved()
    segments = []
    for seq in range(3):
        history.generate(f" After {seq}.")
        history.retry(f" Again {seq}.")
        segments.append(HistorySegment.from_bytes(history.segment("c1", seq).to_bytes()))
        history.mark_saved()
    history.undo()
    segments.append(HistorySegment.from_bytes(history.segment("c1", 3).to_bytes()))  # a move only
    rebuilt = History.from_stored(StoryContent.from_bytes(content.to_bytes()), segments)
    assert rebuilt.text == history.text and rebuilt.head == history.head
    assert [node.to_json() for node in rebuilt.nodes] == [node.to_json() for node in history.nodes]
    folded = History.from_stored(StoryContent.from_bytes(rebuilt.compacted(4).to_bytes()))
    assert [node.to_json() for node in folded.nodes] == [node.to_json() for node in history.nodes]
    for node in history.nodes:
        assert folded.text_at(node.id) == history.text_at(node.id)
    folded.verify()


def test_a_segment_must_continue_the_node_ids():
    history = _story()
    content = history.compacted(0)
    history.mark_saved()
    history.generate(" x")
    segment = history.segment("c1", 0)
    segment.nodes[0].id = 5
    with pytest.raises(DocumentError, match="ids are positions"):
        History.from_stored(content, [segment])


def test_unsaved_nodes_rebase_as_branches():
    stored = _story()
    stored.generate(" Common.")
    stored.mark_saved()
    mine = History.from_stored(stored.compacted(0))
    theirs = History.from_stored(stored.compacted(0))
    their_node = theirs.generate(" Theirs.")
    theirs.mark_saved()
    my_first = mine.generate(" Mine.")
    mine.generate(" Mine again.")
    merged = mine.rebased_onto(theirs)
    assert merged.text.endswith("Common. Mine. Mine again.")
    mapped_first = my_first.id + 1
    assert merged.node(mapped_first).parent == merged.node(their_node.id).parent  # siblings
    assert merged.text_at(their_node.id).endswith("Common. Theirs.")
    assert merged.unsaved and len(merged) == 5
    merged.verify()
