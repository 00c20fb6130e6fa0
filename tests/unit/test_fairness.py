from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from inference.fairness import WaitingJob, fair_order, next_batch, record_turns


def job(job_id: int, user: int, model: str = "a", key: str = "k", images: int = 1) -> WaitingJob:
    return WaitingJob(job_id, user, model, (model, key), images, sequence=job_id)


def test_one_user_with_many_jobs_does_not_starve_others() -> None:
    waiting = [job(i, user=1) for i in range(1, 11)] + [job(11, user=2), job(12, user=3)]
    order = [j.job_id for j in fair_order(waiting, {}, None)]
    # user 2 and 3 each run within the first round, not after user 1's ten jobs
    assert order[:3] == [1, 11, 12]
    assert order[3:] == list(range(2, 11))


def test_user_served_this_round_waits_for_the_next() -> None:
    waiting = [job(1, user=1), job(2, user=2)]
    order = [j.job_id for j in fair_order(waiting, {1: 1}, None)]
    assert order == [2, 1]


def test_turns_rebase_on_the_least_served_waiting_user() -> None:
    # user 1 had three jobs in one batch, users 2 and 3 one each
    turns = record_turns({}, [1, 2, 3, 1, 1], waiting_users={1, 2, 3})
    assert turns == {1: 2}
    # nobody waiting: counts are kept, so the user just served waits for newcomers
    assert record_turns({}, [1], waiting_users=set()) == {1: 1}
    assert record_turns({1: 1}, [2], waiting_users={1, 2}) == {}


def test_loaded_model_goes_first_within_a_round_only() -> None:
    waiting = [job(1, user=1, model="b"), job(2, user=2, model="a"), job(3, user=1, model="a")]
    order = [j.job_id for j in fair_order(waiting, {}, "a")]
    # round 0 has jobs 1 (b) and 2 (a): the loaded model a goes first; job 3 is round 1
    assert order == [2, 1, 3]


def test_batch_is_a_compatible_prefix() -> None:
    order = [job(1, 1), job(2, 2), job(3, 3, key="other"), job(4, 4)]
    assert [j.job_id for j in next_batch(order, max_images=4)] == [1, 2]
    assert [j.job_id for j in next_batch(order, max_images=1)] == [1]
    big = [job(1, 1, images=3), job(2, 2, images=2)]
    assert [j.job_id for j in next_batch(big, max_images=4)] == [1]


jobs_strategy = st.lists(
    st.tuples(st.integers(1, 6), st.sampled_from(["a", "b", "c"])), min_size=1, max_size=60
)


@given(jobs_strategy, st.sampled_from([None, "a", "b"]))
def test_order_is_a_permutation_and_round_robin(jobs: list, loaded: str | None) -> None:
    waiting = [job(i, user, model) for i, (user, model) in enumerate(jobs, start=1)]
    order = fair_order(waiting, {}, loaded)
    assert sorted(j.job_id for j in order) == [j.job_id for j in waiting]
    # each user's jobs keep their own order
    for user in {j.user_id for j in waiting}:
        mine = [j.job_id for j in order if j.user_id == user]
        assert mine == sorted(mine)
    # in any prefix, no user is more than one job ahead of another user who still waits
    seen: Counter[int] = Counter()
    totals = Counter(j.user_id for j in waiting)
    for j in order:
        others = [seen[u] for u in totals if u != j.user_id and seen[u] < totals[u]]
        assert all(seen[j.user_id] <= n for n in others)
        seen[j.user_id] += 1
