"""Settings (xpcnn.config): defaults in one dataclass, ``xpcnn.using`` scoped per thread and task, set_*/get_*."""
from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

import xpcnn
from xpcnn import config, threads

pytestmark = pytest.mark.process_settings  # these tests set and read the process defaults: no using() around them


@pytest.fixture(autouse=True)
def restored_defaults():
    saved = config._defaults
    yield
    config._defaults = saved


def test_defaults_are_one_dataclass():
    s = config.Settings()
    assert dataclasses.is_dataclass(s) and s.workspace_limit is None and s.conv_layout == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.plan = "gpu"
    assert config.settings() is config._defaults


def test_using_sets_for_the_block_and_restores_even_on_error():
    with xpcnn.using(plan="gpu", workspace_limit=4096) as s:
        assert s.plan == "gpu" and config.get_plan() == "gpu" and config.gpu_plan()
        assert config.get_workspace_limit() == 4096 == config.get_workspace_limit(gpu=True)
        with xpcnn.using(plan="cpu"):  # nested: the inner change only
            assert config.get_plan() == "cpu" and config.get_workspace_limit() == 4096
        assert config.get_plan() == "gpu"
    assert config.settings() == config._defaults and config.get_workspace_limit() == config.DEFAULT_WORKSPACE_LIMIT
    with pytest.raises(RuntimeError):
        with xpcnn.using(fast_paths=False):
            assert not config.get_fast_paths()
            raise RuntimeError
    assert config.get_fast_paths()


@pytest.mark.parametrize("changes, match", [
    ({"workspace_limit": 0}, "workspace limit must be a positive int"),
    ({"workspace_limit": True}, "workspace limit must be a positive int"),
    ({"num_threads": 1.5}, "number of threads must be a positive int or None"),
    ({"plan": "tpu"}, r"plan must be one of \('auto', 'cpu', 'gpu'\)"),
    ({"conv_layout": "winograd"}, "conv layout must be one of"),
    ({"conv_input_grad": "fft"}, "conv input gradient must be one of"),
])
def test_using_checks_values_as_the_setters_do(changes, match):
    with pytest.raises(ValueError, match=match):
        with xpcnn.using(**changes):
            pass
    assert config.settings() == config._defaults


def test_an_unknown_setting_names_the_known_ones():
    with pytest.raises(TypeError, match=r"unknown setting\(s\) 'workspace'; the settings are workspace_limit, "):
        with xpcnn.using(workspace=1):
            pass


def test_setters_change_the_block_inside_using_else_the_defaults():
    config.set_num_threads(3)
    assert config._defaults.num_threads == 3
    with xpcnn.using(plan="cpu"):
        config.set_num_threads(1)
        assert config.get_num_threads() == 1
    assert config.get_num_threads() == 3  # the block's change ended with it
    config.set_num_threads(None)
    assert config.get_num_threads() is None


def test_conv_algorithm_names_map_onto_layout_and_input_gradient():
    for name, pair in [("im2col", ("im2col", "col2im")), ("im2col_nhwc", ("im2col_nhwc", "col2im")),
                       ("im2col_blocked", ("im2col_blocked", "col2im")), ("transposed", ("auto", "transposed")),
                       ("polyphase", ("auto", "polyphase")), ("banded", ("auto", "banded")), (None, ("auto", "auto"))]:
        config.set_conv_algorithm(name)
        assert (config.settings().conv_layout, config.settings().conv_input_grad) == pair
        assert config.get_conv_algorithm() == (name or "auto")
    with xpcnn.using(conv_layout="im2col_nhwc", conv_input_grad="banded"):
        assert config.get_conv_algorithm() == "im2col_nhwc+banded"
    with pytest.raises(ValueError, match="conv algorithm must be one of"):
        config.set_conv_algorithm("winograd")


def test_using_holds_in_its_thread_only():
    entered, checked = threading.Barrier(2), threading.Barrier(2)
    seen = {}

    def other():
        entered.wait()  # the main thread is inside its block now
        seen["other"] = config.get_plan()
        checked.wait()

    t = threading.Thread(target=other)
    t.start()
    with xpcnn.using(plan="gpu"):
        entered.wait()
        checked.wait()
        seen["main"] = config.get_plan()
    t.join()
    assert seen == {"main": "gpu", "other": config._defaults.plan}


def test_using_holds_in_its_task_only():
    async def task(plan, started, release):
        with xpcnn.using(plan=plan):
            started.set()
            await release.wait()  # the other task enters its own block meanwhile
            return config.get_plan()

    async def main():
        events = [asyncio.Event() for _ in range(3)]
        a = asyncio.create_task(task("gpu", events[0], events[2]))
        b = asyncio.create_task(task("cpu", events[1], events[2]))
        await events[0].wait()
        await events[1].wait()
        events[2].set()
        return await a, await b, config.get_plan()

    assert asyncio.run(main()) == ("gpu", "cpu", config._defaults.plan)


def test_worker_threads_run_shards_in_the_callers_settings():
    with xpcnn.using(workspace_limit=12345):
        got = threads.run(lambda a, b: (config.get_workspace_limit(), threading.get_ident()), [(0, 1), (1, 2)])
    assert [limit for limit, _ in got] == [12345, 12345]
    assert got[0][1] != got[1][1]  # the second shard ran on a worker thread
    assert threads.run(lambda a, b: config.get_workspace_limit(), [(0, 1), (1, 2)]) == [
        config.DEFAULT_WORKSPACE_LIMIT] * 2
