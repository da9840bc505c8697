"""Reducers run on one intra-op thread and give the forward pass its threads back."""

from __future__ import annotations

import pytest
import torch

from lmlens_attention.threading_policy import on_one_thread


def test_the_policy_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMLENS_ONE_THREAD_REDUCERS", raising=False)

    def reducer(p: torch.Tensor) -> torch.Tensor:
        return p

    assert on_one_thread(reducer) is reducer


def test_reducer_sees_one_thread_and_the_setting_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMLENS_ONE_THREAD_REDUCERS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = on_one_thread(lambda p: torch.get_num_threads())(torch.zeros(2))
        assert seen == 1 and torch.get_num_threads() == 2

        def boom(p: torch.Tensor) -> None:
            raise ValueError("reducer failed")

        with pytest.raises(ValueError):
            on_one_thread(boom)(torch.zeros(2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
