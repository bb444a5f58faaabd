"""The console progress bar: drawn on a terminal, absent from logs and pipes."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import termios

from mnist_lr.run import progress_bar


def test_progress_bar_is_off_when_not_attached_to_a_terminal():
    assert progress_bar(3, stream=io.StringIO()) is None


def test_progress_bar_draws_each_epoch_on_a_terminal():
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with os.fdopen(slave, "w") as terminal:
        update = progress_bar(3, stream=terminal)
        for done in (4096, 8192, 10000):
            update(2, done, 10000)
        terminal.flush()
    drawn = os.read(master, 65536).decode(errors="replace")
    os.close(master)

    assert "epoch 2/3" in drawn
    assert "/10000" in drawn and "img/s" in drawn
