import logging

import huggingface_hub
import pytest
import transformers

from aloekit.cli.app import quiet_hugging_face


@pytest.fixture
def library_state():
    """Put transformers' verbosity and the hub's progress bars back as they were."""
    verbosity, bars_off = transformers.logging.get_verbosity(), huggingface_hub.utils.are_progress_bars_disabled()
    yield
    transformers.logging.set_verbosity(verbosity)
    if not bars_off:
        huggingface_hub.utils.enable_progress_bars()


def test_libraries_imported_before_the_cli_are_quieted_too(monkeypatch, library_state):
    # They read their environment switches only at import (aloekit called from a notebook, a preloaded process).
    for name in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    transformers.logging.set_verbosity_warning()
    huggingface_hub.utils.enable_progress_bars()
    quiet_hugging_face()
    assert transformers.logging.get_verbosity() == logging.ERROR
    assert huggingface_hub.utils.are_progress_bars_disabled()


def test_the_users_own_settings_win(monkeypatch, library_state):
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    transformers.logging.set_verbosity_info()
    huggingface_hub.utils.enable_progress_bars()
    quiet_hugging_face()
    assert transformers.logging.get_verbosity() == logging.INFO
    assert not huggingface_hub.utils.are_progress_bars_disabled()
