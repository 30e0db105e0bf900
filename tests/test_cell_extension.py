"""The cell-cost IPython extension in a real IPython shell, against a gateway that is not
there: cells run as usual, the problem is said once (with what to do), then nothing."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def shell(monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VKEYS_URL", f"http://127.0.0.1:{port}/vkeys")
    monkeypatch.setenv("OPENAI_API_KEY", "vk-abcdefghijkl_" + "s" * 32)
    shell = InteractiveShell.instance()
    yield shell
    InteractiveShell.clear_instance()


def test_gateway_down_is_said_once_and_cells_still_run(shell, capsys):
    from jupyter_vkeys.kernel.cells import load_ipython_extension

    load_ipython_extension(shell)
    first = shell.run_cell("a = 40 + 2")
    second = shell.run_cell("b = a + 1")
    assert first.success and second.success and shell.user_ns["b"] == 43
    err = capsys.readouterr().err
    assert err.count("jupyter-vkeys:") == 1, err
    assert "does not answer" in err and "cost per cell is off" in err
    shell.run_cell("%vkeys quiet")
    assert "cost line under cells off" in capsys.readouterr().out


def test_no_key_means_no_hooks_and_no_noise(shell, capsys, monkeypatch):
    from jupyter_vkeys.kernel.cells import load_ipython_extension

    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-a-virtual-key")
    load_ipython_extension(shell)
    assert shell.run_cell("c = 1").success
    assert capsys.readouterr().err == ""
    shell.run_cell("%%vkeys dry_run\nd = 2")
    assert "dry runs need the kernel's virtual key" in capsys.readouterr().err
