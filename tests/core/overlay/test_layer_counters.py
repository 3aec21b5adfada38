"""One hop's layers in one direction: each cell opens only as the next counter's; a cell
from further ahead shows cells went missing (the path breaks), and a replay, junk or a
cell from beyond the window is refused without moving the counter."""

from __future__ import annotations

import pytest

from overlay.constants import LAYER_GAP_WINDOW
from overlay.onion import LayerError, LayerOpener, LayerSealer, PathBroken, ReplayedLayer

KEY, PREFIX, TAG_KEY = bytes(range(32)), bytes(16), bytes(range(32, 64))


def ends() -> tuple[LayerSealer, LayerOpener]:
    return LayerSealer(KEY, PREFIX, TAG_KEY), LayerOpener(KEY, PREFIX, TAG_KEY)


def test_cells_open_in_the_order_they_were_sealed() -> None:
    sealer, opener = ends()
    for number in range(100):
        assert opener.open(sealer.seal(b"cell %d" % number)) == b"cell %d" % number


def test_a_cell_after_a_missing_one_breaks_the_path() -> None:
    sealer, opener = ends()
    sealer.seal(b"lost")
    with pytest.raises(PathBroken):
        opener.open(sealer.seal(b"after it"))


@pytest.mark.parametrize("refused_first", [False, True])
def test_a_cell_from_beyond_the_window_is_junk_not_a_gap(refused_first: bool) -> None:
    sealer, opener = ends()
    if refused_first:  # the window is then kept from the first refusal on
        with pytest.raises(ReplayedLayer):
            opener.open(b"junk" * 20)
    cells = [sealer.seal(b"%d" % n) for n in range(LAYER_GAP_WINDOW + 1)]
    with pytest.raises(PathBroken):
        opener.open(cells[LAYER_GAP_WINDOW - 1])  # the last counter in the window
    with pytest.raises(ReplayedLayer):
        opener.open(cells[LAYER_GAP_WINDOW])  # one past it
    assert opener.open(cells[0]) == b"0"


def test_replays_and_junk_are_refused_and_the_next_cell_still_opens() -> None:
    sealer, opener = ends()
    first = sealer.seal(b"first")
    assert opener.open(first) == b"first"
    with pytest.raises(ReplayedLayer):
        opener.open(first)
    with pytest.raises(ReplayedLayer):
        opener.open(b"\x00" * 80)
    for number in range(LAYER_GAP_WINDOW * 2):  # the window moves on with the counter
        assert opener.open(sealer.seal(b"%d" % number)) == b"%d" % number
    sealer.seal(b"lost")
    with pytest.raises(PathBroken):
        opener.open(sealer.seal(b"after it"))


def test_a_cell_that_does_not_authenticate_leaves_the_counter_where_it_was() -> None:
    sealer, opener = ends()
    cell = sealer.seal(b"genuine")
    forged = cell[:-1] + bytes([cell[-1] ^ 1])  # its tag, another body
    with pytest.raises(LayerError):
        opener.open(forged)
    assert opener.open(cell) == b"genuine"
