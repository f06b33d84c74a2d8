"""Async experience actors against the colocated scorer (same scoring function, same numbers)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray
import torch

from wmtp.data.collator import Batch
from wmtp.model.value import build_value_model, value_args_from_policy
from wmtp.orchestration.experience import AsyncExperienceScorer
from wmtp.orchestration.resources import EXPERIENCE_RESOURCE
from wmtp.recipes.experience import ExperienceSpec, LearnerScorer, build_scoring_model

pytestmark = pytest.mark.ray


def make_batch(seed: int, vocab: int, b: int = 3, s: int = 12) -> Batch:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab, (b, s), generator=g)
    start = torch.tensor([4, 5, 3])[:b]
    end = torch.tensor([s - 1, s - 3, s - 2])[:b]
    pos = torch.arange(s)
    resp = (pos >= start[:, None]) & (pos <= end[:, None])
    return Batch(tokens=tokens, labels=torch.where(resp, tokens, -100), attention_mask=pos <= end[:, None],
                 is_correct=torch.tensor([True, False, True])[:b], response_start=start, response_end=end,
                 problem_id=[f"p{i}" for i in range(b)], row=torch.arange(b))


def trained(state: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
    """A stand-in for a learner update: a deterministic nudge of every weight."""
    g = torch.Generator().manual_seed(version)
    return {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in state.items()}


@pytest.fixture
def critic_spec(tiny_args):
    args = value_args_from_policy(tiny_args)
    state = {k: v.clone() for k, v in build_value_model(args, "linear", seed=0).state_dict().items()}
    return ExperienceSpec("verifiable", args, "linear", 0.99, 0.95, "outcome"), state


def colocated_scorer(spec, state, device) -> LearnerScorer:
    """The in-learner scorer over a model holding `state` (what the recipes score with)."""
    return LearnerScorer(spec, build_scoring_model(spec, state, device))


def publish(scorer: LearnerScorer, state, version: int) -> None:
    scorer.model.load_state_dict(state)
    scorer.publish_critic(scorer.model, version)


def assert_same_scores(a, b) -> None:
    assert a.critic_version == b.critic_version
    for field in ("values_old", "advantages", "returns"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-6, atol=1e-6)


def test_async_equals_colocated_with_sync_interval_1_and_queue_depth_0(ray_cluster, critic_spec, tiny_args):
    spec, state = critic_spec
    colocated = colocated_scorer(spec, state, torch.device("cpu"))
    pool = AsyncExperienceScorer(spec, state, name_prefix="wmtp-experience-t1-r0", num_actors=2,
                                 queue_depth=0, max_staleness=0)
    try:
        for step in range(1, 5):
            batch = make_batch(step, tiny_args.vocab_size)
            colocated.submit(batch)
            pool.submit(batch)
            expected, got = colocated.get(), pool.get()
            assert got.batch is batch  # the learner's own batch object comes back
            assert_same_scores(got, expected)
            assert got.stats["critic_staleness"] == 0
            state = trained(state, step)
            publish(colocated, state, step)
            pool.publish_critic(state, step)
        assert ray.get_actor("wmtp-experience-t1-r0-1") is not None  # named, visible on the dashboard
    finally:
        pool.close()


def test_queue_ahead_records_and_bounds_staleness(ray_cluster, critic_spec, tiny_args):
    spec, state = critic_spec
    pool = AsyncExperienceScorer(spec, state, name_prefix="wmtp-experience-t2-r0", num_actors=1,
                                 queue_depth=2, max_staleness=1)
    try:
        batches = [make_batch(i, tiny_args.vocab_size) for i in range(4)]
        for b in batches[:3]:
            pool.submit(b)
        with pytest.raises(RuntimeError, match="queue full"):
            pool.submit(batches[3])
        first = pool.get()  # scored with version 0, learner still at 0
        assert first.critic_version == 0 and first.stats["critic_staleness"] == 0
        assert first.stats["experience_queue_depth"] == 2
        pool.publish_critic(trained(state, 1), 1)
        second = pool.get()  # scored with version 0 before the publish: lags by 1 (allowed)
        assert second.critic_version == 0 and second.stats["critic_staleness"] == 1
        pool.publish_critic(trained(state, 2), 2)
        third = pool.get()  # would lag by 2 > max_staleness=1: rescored with version 2
        assert third.critic_version == 2 and third.stats["critic_staleness"] == 0
        assert pool.rescored == 1
        reference = colocated_scorer(spec, trained(state, 2), torch.device("cpu"))
        reference.version = 2
        reference.submit(batches[2])
        assert_same_scores(third, reference.get())
    finally:
        pool.close()


def test_killed_actor_is_restarted_resynced_and_the_batch_rescored(ray_cluster, critic_spec, tiny_args):
    spec, state = critic_spec
    pool = AsyncExperienceScorer(spec, state, name_prefix="wmtp-experience-t3-r0", num_actors=1,
                                 queue_depth=1, max_staleness=5)
    try:
        newest = trained(state, 1)
        pool.publish_critic(newest, 1)
        reference = colocated_scorer(spec, newest, torch.device("cpu"))
        reference.version = 1
        actor = pool.actor_handles()[0]
        for i, wait_for_restart in enumerate((True, False)):
            pid = ray.get(actor.pid.remote())
            os.kill(pid, signal.SIGKILL)
            if wait_for_restart:  # the restarted actor answers, but has lost its weights
                assert wait_for_new_pid(actor, pid) != pid
            batch = make_batch(7 + i, tiny_args.vocab_size)
            pool.submit(batch)
            got = pool.get()
            assert pool.recovered == i + 1
            reference.submit(batch)
            assert_same_scores(got, reference.get())
    finally:
        pool.close()


def wait_for_new_pid(actor, old_pid: int, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid = ray.get(actor.pid.remote(), timeout=10)
            if pid != old_pid:
                return pid
        except ray.exceptions.RayActorError:
            pass
        time.sleep(0.1)
    raise TimeoutError("experience actor did not restart")


def test_scoring_without_weights_is_a_clear_error(ray_cluster, critic_spec, tiny_args):
    spec, _ = critic_spec
    pool = AsyncExperienceScorer(spec, None, name_prefix="wmtp-experience-t4-r0", num_actors=1,
                                 queue_depth=0, max_staleness=0)
    try:
        pool.submit(make_batch(0, tiny_args.vocab_size))
        with pytest.raises(RuntimeError, match="no weights"):
            pool.get()
    finally:
        pool.close()


def test_unschedulable_actors_fail_with_the_reason(ray_cluster, critic_spec, monkeypatch):
    from wmtp.orchestration import experience

    monkeypatch.setattr(experience, "ACTOR_START_TIMEOUT_S", 2.0)
    spec, state = critic_spec
    with pytest.raises(RuntimeError, match="not scheduled.*GPU.*placement=colocated"):
        AsyncExperienceScorer(spec, state, name_prefix="wmtp-experience-t5-r0", num_actors=1, queue_depth=0,
                              max_staleness=0, actor_options={"num_cpus": 1.0, "num_gpus": 1})  # the test cluster has no GPU


def test_dedicated_scoring_nodes_need_the_custom_resource(ray_cluster, critic_spec, monkeypatch):
    from wmtp.orchestration import experience

    monkeypatch.setattr(experience, "ACTOR_START_TIMEOUT_S", 2.0)
    spec, state = critic_spec
    # The test cluster has CPUs but no node with `wmtp_experience`: never placed, said so at once.
    with pytest.raises(RuntimeError, match="not scheduled.*wmtp_experience.*experience_nodes=dedicated"):
        AsyncExperienceScorer(spec, state, name_prefix="wmtp-experience-t7-r0", num_actors=1, queue_depth=0,
                              max_staleness=0,
                              actor_options={"num_cpus": 1.0, "num_gpus": 0, "resources": {EXPERIENCE_RESOURCE: 1.0}})


def test_experience_nodes_choice_reaches_the_plan_the_fit_check_and_the_actor_options():
    from wmtp.config.schema import WMTPConfig
    from wmtp.orchestration.experience import actor_placement, experience_actor_resources
    from wmtp.orchestration.resources import UnschedulableError, check_fits, ray_start_flags, run_resources

    cfg = WMTPConfig(recipe="verifiable")
    cfg.orchestration.placement, cfg.orchestration.num_workers = "async", 2
    count, options = experience_actor_resources(cfg)
    placed = actor_placement(options, "a" * 56)
    assert count == 2 and "resources" not in options
    assert placed["scheduling_strategy"].node_id == "a" * 56 and placed["scheduling_strategy"].soft is False

    cfg.orchestration.experience_nodes = "dedicated"
    need = run_resources(cfg)
    count, options = experience_actor_resources(cfg)
    assert options["resources"] == {"wmtp_experience": 1.0} and "scheduling_strategy" not in actor_placement(options, "x")
    assert need.bundle() == {"CPU": 4.0, "wmtp_experience": 2.0}
    assert "--resources='{\"wmtp_experience\": 2}'" in ray_start_flags(need.bundle())
    assert "nodes with 2 wmtp_experience" in need.explain()
    check_fits(need, {"CPU": 8.0, "wmtp_experience": 2.0})
    with pytest.raises(UnschedulableError, match="missing: 2 wmtp_experience"):
        check_fits(need, {"CPU": 8.0})


def test_cpus_needed_counts_workers_and_experience_actors():
    from wmtp.config.schema import WMTPConfig
    from wmtp.orchestration.ray_runtime import cpus_needed

    cfg = WMTPConfig()
    cfg.orchestration.num_workers, cfg.orchestration.cpus_per_worker = 2, 1.5
    assert cpus_needed(cfg) == 3
    cfg.orchestration.placement, cfg.orchestration.num_experience_actors = "async", 2
    assert cpus_needed(cfg) == 3  # baseline scores nothing: no experience actors
    cfg.recipe = "verifiable"
    assert cpus_needed(cfg) == 3 + 2 * 2


def test_publish_puts_the_compute_dtype_weights_once_the_bytes_the_plan_states(ray_cluster, critic_spec, monkeypatch):
    """One `ray.put` per publish, of the critic in the compute dtype (bf16 here): the bytes
    `weight_sync_cost` states for the object store, whatever the number of actors."""
    import dataclasses

    from tests.recipes.harness import recipe_config
    from wmtp.orchestration import experience
    from wmtp.parallel.weight_sync import weight_sync_cost

    spec, state = critic_spec
    spec = dataclasses.replace(spec, precision="bf16")
    puts: list[int] = []
    real_put = experience.ray.put

    def counting_put(value, **kw):
        puts.append(sum(t.numel() * t.element_size() for t in value.values()))
        assert all(t.dtype == torch.bfloat16 for t in value.values() if t.is_floating_point())
        return real_put(value, **kw)

    monkeypatch.setattr(experience.ray, "put", counting_put)
    pool = AsyncExperienceScorer(spec, None, name_prefix="wmtp-experience-t6-r0", num_actors=2,
                                 queue_depth=0, max_staleness=0)
    try:
        pool.publish_critic(state, 1)
        pool.publish_critic(trained(state, 2), 2)
    finally:
        pool.close()
    cfg = recipe_config("verifiable", "/tmp/unused", "orchestration.enabled=true", "orchestration.placement=async",
                        "orchestration.num_workers=1", "train.precision=bf16")
    plan = weight_sync_cost(cfg, sum(v.numel() for v in state.values()))
    assert puts == [plan.object_store_bytes_per_publish] * 2
    assert plan.bytes_per_publish_total == plan.object_store_bytes_per_publish  # one rank, one node


def test_async_placement_that_cannot_fit_is_refused_naming_one_that_fits():
    from tests.recipes.harness import recipe_config
    from wmtp.orchestration.experience import async_fit_problem, experience_actor_resources

    cfg = recipe_config("verifiable", "/tmp/unused", "orchestration.enabled=true", "orchestration.placement=async",
                        "orchestration.num_workers=4", "orchestration.num_experience_actors=2",
                        "orchestration.use_gpu=true")
    assert experience_actor_resources(cfg) == (8, {"num_cpus": 1, "num_gpus": 1})
    problem = async_fit_problem(cfg, 4)
    assert "needs 12 GPUs" in problem and "placement=colocated" in problem
    # fewer learners is named with the memory check it needs (at 7B two learners do not fit 80 GB)
    assert "num_workers=1 if the plan fits 1 learner(s) per GPU memory (check with --dry-run --cluster FILE)" in problem
    assert async_fit_problem(cfg, 12) is None
    two = cfg.model_copy(update={"orchestration": cfg.orchestration.model_copy(update={"num_workers": 2})})
    assert "num_experience_actors=1" in async_fit_problem(two, 4)  # 2 learners + 2 actors fit on 4
    colocated = cfg.model_copy(update={"orchestration": cfg.orchestration.model_copy(update={"placement": "colocated"})})
    assert experience_actor_resources(colocated)[0] == 0 and async_fit_problem(colocated, 4) is None


def test_one_weight_board_serves_every_publish_of_a_run(ray_cluster, critic_spec):
    """Rank 0 hands the published weights to the other ranks through the run's named board actor:
    the scorer keeps one handle to it, so the board lives for the run. (A handle taken per publish
    let Ray end the board when the publish returned and start a new worker process for the next:
    0.8 s a publish on an idle Ray, most of a local-light policy step on 2 cores.)"""

    class OneRank:  # the barriers of a group whose other ranks have already arrived
        def barrier(self) -> None:
            pass

    spec, state = critic_spec
    pool = AsyncExperienceScorer(spec, state, name_prefix="wmtp-experience-t9-r0", num_actors=1,
                                 queue_depth=0, max_staleness=0, board_name="wmtp-weights-t9")
    try:
        boards = []
        for version in range(1, 4):
            ref = ray.put(trained(state, version))
            assert pool._share(ref, OneRank()) == ref  # the reference every rank reads back
            time.sleep(0.5)  # time enough for Ray to end an unreferenced actor
            boards.append(ray.get_actor("wmtp-weights-t9")._actor_id)
        assert boards[0] == boards[1] == boards[2]
    finally:
        pool.close()
