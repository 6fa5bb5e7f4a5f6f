"""Every segmentation run gets a verdict - trusted, provisional or withheld - and each
reason that lowers it is said in words. Plus the rules behind some reasons: missing data
handled in the open, identity hysteresis, names that tell segments apart."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.segmentation.clustering import Candidate, ClusterSettings, KHold, distinguishing_names, hold_k
from pipelines.segmentation.dimensions import missingness_segments
from pipelines.segmentation.run import History, Place, SwitchRule, Whereabouts, _hold_accounts, _hold_key_tier
from pipelines.segmentation.verdict import Evidence, VerdictSettings, judge

SETTINGS = VerdictSettings()


def healthy(**changes) -> Evidence:
    evidence = Evidence(
        jaccard={"Price-focused": 0.93, "Service-focused": 0.9},
        shares={"Price-focused": 0.55, "Service-focused": 0.45},
        classifier_accuracy=0.75,
        classifier_base_rate=0.55,
        classifier_recall={"Price-focused": 0.8, "Service-focused": 0.7},
        dimensions_used=7,
        prospects=100,
        prospect_segments=2,
        prospect_spread=0.1,
    )
    for key, value in changes.items():
        setattr(evidence, key, value)
    return evidence


def codes(verdict) -> dict[str, str]:
    return {r["code"]: r["severity"] for r in verdict.reasons}


def test_a_healthy_run_is_trusted_and_published():
    verdict = judge(healthy(), SETTINGS)
    assert (verdict.verdict, verdict.reasons, verdict.published) == ("trusted", [], True)
    assert "trusted" in verdict.words()


@pytest.mark.parametrize(
    "changes, code, severity, words",
    [
        ({"jaccard": {"Price-focused": 0.93, "Service-focused": 0.61}}, "stability", "provisional", "'Service-focused' is unstable"),
        ({"jaccard": {"Price-focused": 0.93, "Service-focused": 0.49}}, "stability", "withheld", "withheld under 0.5"),
        ({"shares": {"Price-focused": 0.99, "Emerging": 0.01}}, "small_segment", "provisional", "'Emerging' 1.0%"),
        ({"classifier_accuracy": 0.48, "classifier_base_rate": 0.45}, "classifier_base_rate", "provisional", "base rate 0.45"),
        (
            {"classifier_recall": {"Price-focused": 0.9, "Service-focused": 0.1}},
            "classifier_recall",
            "provisional",
            "'Service-focused' 0.10",
        ),
        ({"left_out": {"revenue": "missing for 95% of customers"}}, "imputed", "provisional", "revenue (missing for 95%"),
        ({"left_out": {"brand": "no data: empty for every customer"}}, "dimensions_without_data", "provisional", "brand"),
        (
            {"left_out": {"a": "no data: empty", "b": "no data: empty"}, "dimensions_used": 1},
            "dimensions_without_data",
            "withheld",
            "a, b",
        ),
        (
            {"answered": 100, "unusable": 35, "excluded": {"straight-lining": 30, "too few items": 12}},
            "respondents_excluded",
            "provisional",
            "30 for straight-lining, 12 for too few items",
        ),
        ({"answered": 100, "unusable": 5, "excluded": {"straight-lining": 5}}, "respondents_excluded", "note", "5 of 100"),
        ({"prospect_segments": 1}, "prospects_flat", "provisional", "all 100 prospects"),
        ({"prospect_spread": 0.001}, "prospects_flat", "provisional", "hardly vary"),
        ({"fallback": "segments inferred from behaviour: only 3 customers"}, "inferred_from_behaviour", "provisional", "only 3"),
        ({"not_found": ["Loyalty & partnership"]}, "segment_not_found", "provisional", "Loyalty & partnership"),
    ],
)
def test_each_reason_lowers_the_verdict_and_is_said(changes, code, severity, words):
    verdict = judge(healthy(**changes), SETTINGS)
    assert codes(verdict) == {code: severity}
    expected = {"note": "trusted", "provisional": "provisional", "withheld": "withheld"}[severity]
    assert verdict.verdict == expected
    assert words in verdict.words()


def test_a_withheld_run_replaces_the_published_one_only_when_the_policy_says_so():
    unstable = healthy(jaccard={"Price-focused": 0.3, "Service-focused": 0.9})
    assert not judge(unstable, SETTINGS).published
    assert "NOT published" in judge(unstable, SETTINGS).words()
    assert judge(unstable, VerdictSettings(publish_withheld=True)).published


def test_the_worst_reason_decides():
    verdict = judge(healthy(prospect_segments=1, jaccard={"Price-focused": 0.2, "Service-focused": 0.9}), SETTINGS)
    assert verdict.verdict == "withheld" and set(codes(verdict)) == {"prospects_flat", "stability"}


def test_missing_values_that_make_up_a_cluster_are_caught():
    labels = np.array([0] * 40 + [1] * 40 + [2] * 20)
    imputed = pd.DataFrame({"revenue": [False] * 80 + [True] * 18 + [False] * 2, "price": [i % 5 == 0 for i in range(100)]})
    found = missingness_segments(labels, imputed)
    assert list(found) == ["revenue"] and "90% of one cluster" in found["revenue"]


def candidate(k: int, min_jaccard: float, share: float = 0.1) -> Candidate:
    return Candidate(k, 0.2, 0.0, min_jaccard, min_jaccard, share, min_jaccard >= 0.85 and share >= 0.04)


def test_k_is_kept_until_another_k_is_clearly_better_in_consecutive_runs():
    settings = ClusterSettings(k_switch_runs=2, k_switch_margin=0.05)
    candidates = [candidate(3, 0.95), candidate(4, 0.93)]
    preferred = candidates[1]  # the largest stable k
    # first run that prefers 4: keep 3
    k, why = hold_k(preferred, candidates, settings, KHold(previous_k=3, preferred=[3]))
    assert k == 3 and "k=3 kept" in why and "1 consecutive run(s), 2 needed" in why
    # the run before preferred 4 too: switch
    assert hold_k(preferred, candidates, settings, KHold(previous_k=3, preferred=[4])) == (4, None)
    # a borderline preference (not clearly above the bar) never switches
    borderline = [candidate(3, 0.95), candidate(4, 0.87)]
    assert hold_k(borderline[1], borderline, settings, KHold(previous_k=3, preferred=[4, 4]))[0] == 3
    # the kept k has become unstable: switch at once
    broken = [candidate(3, 0.6), candidate(4, 0.93)]
    assert hold_k(broken[1], broken, settings, KHold(previous_k=3, preferred=[3])) == (4, None)
    # every k has a segment under the minimum share (the rule fell back to the most stable
    # k): switching mends nothing, so a marginally more stable k does not replace the kept one
    small = [candidate(3, 0.98, share=0.02), candidate(4, 0.97, share=0.02)]
    k, why = hold_k(small[0], small, settings, KHold(previous_k=4, preferred=[4]))
    assert k == 4 and "no more acceptable" in why
    assert hold_k(small[0], small, settings, KHold(previous_k=4, preferred=[3]))[0] == 4  # no clear margin either


def test_an_account_moves_only_when_its_new_segment_is_clearly_better():
    accounts = pd.Index(["near", "clear", "twice", "new"])
    probs = pd.DataFrame(
        {"a": [0.45, 0.1, 0.45, 0.2], "b": [0.55, 0.9, 0.55, 0.8]},
        index=accounts,
    )
    preferred = pd.Series("b", index=accounts)
    history = History(
        previous_k=2,
        preferred_k=[2],
        preferred_segments=pd.DataFrame({"seg-1": ["a", "a", "b"]}, index=["near", "clear", "twice"]),
        assigned=pd.Series(["a", "a", "a"], index=["near", "clear", "twice"]),
    )
    assigned, held = _hold_accounts(preferred, probs, history, SwitchRule(band=0.15, margin=0.2, runs=2))
    # near: 0.55 vs 0.45 is no clear gain -> stays; clear: +0.8 -> moves; twice: preferred b
    # in the previous run too -> moves; new: no previous segment -> takes its best
    assert assigned.to_dict() == {"near": "a", "clear": "b", "twice": "b", "new": "b"}
    assert held == 1


def test_a_clustered_account_moves_only_when_clearly_past_the_boundary():
    """Clustered accounts are held by distance, not by k-means' sharp probabilities: an
    account just over the boundary between two centres stays, however sure the soft
    assignment is and however many runs it has been there; one well past it moves."""
    # centres a at 0 and b at 4 (the boundary at 2), c far away; positions on the line a-b
    where = Whereabouts.of(
        [
            Place(
                np.array([[2.2, 0.0], [2.5, 0.0], [3.0, 0.0], [2.1, 0.0]]),
                np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 9.0]]),
                np.array(["a", "b", "c"]),
            )
        ],
        [pd.Index(["over", "edge", "well", "stuck"])],
    )
    accounts = where.parts[0][0].index
    # k-means' soft assignment: sure of b for all of them
    probs = pd.DataFrame({"a": [0.02] * 4, "b": [0.98] * 4, "c": [0.0] * 4}, index=accounts)
    preferred = pd.Series("b", index=accounts)
    history = History(
        previous_k=3,
        preferred_k=[3],
        # "stuck" has preferred b for two runs already: runs do not move a clustered account
        preferred_segments=pd.DataFrame({"seg-1": ["a", "a", "a", "b"]}, index=accounts),
        assigned=pd.Series("a", index=accounts),
    )
    rule = SwitchRule(band=0.15, margin=0.2, runs=2)
    assigned, held = _hold_accounts(preferred, probs, history, rule, where)
    # past the midpoint by 0.05, 0.125, 0.25 and 0.025 of the distance a-b: only "well" is past 0.15
    assert assigned.to_dict() == {"over": "a", "edge": "a", "well": "b", "stuck": "a"}
    assert held == 3
    np.testing.assert_allclose(where.past_midpoint(accounts, history.assigned, preferred), [0.05, 0.125, 0.25, 0.025])
    # band 0: back to following the nearest centre
    assert _hold_accounts(preferred, probs, history, SwitchRule(band=0.0, margin=0.2, runs=2), where)[0].eq("b").all()


def test_an_account_changes_key_tier_only_when_the_cut_says_so_in_consecutive_runs():
    accounts = ["dips", "left", "crashed", "rises", "rose", "new", "steady"]
    # the 80/20 cut this run
    tier = pd.Series(["mid", "mid", "tail", "key", "key", "key", "key"], index=accounts)
    history = History(
        is_key=pd.Series([True, True, True, False, False, True], index=accounts[:6]),
        # what the cut said in the previous run
        cut_key=pd.DataFrame({"seg-1": [True, False, True, False, True, True]}, index=accounts[:6]),
    )
    is_key, held = _hold_key_tier(tier, history, runs=2)
    # dips: below the cut once -> stays key; left: below it twice -> leaves; crashed: fell
    # below the mid tier -> leaves at once; rises: above the cut once -> not yet key; rose:
    # above it twice -> enters; new to the lineage and steady: follow the cut
    assert is_key.to_dict() == {"dips": True, "left": False, "crashed": False, "rises": False, "rose": True, "new": True, "steady": True}
    assert held == 2
    # one run: follow the cut every run
    assert _hold_key_tier(tier, history, runs=1)[0].to_dict() == tier.eq("key").to_dict()


def test_emerging_names_say_what_sets_each_apart_and_never_repeat():
    dims = ["price", "service", "partnership", "delivery"]
    centres = np.array([[0.0, 0.5, 1.2, -0.8], [0.0, 0.5, -0.9, 1.1], [1.5, -0.5, 0.0, 0.0]])
    names = distinguishing_names(centres, [0, 1], dims, "Emerging")
    assert names[0] == "Emerging: high partnership, low delivery"
    assert names[1] == "Emerging: high delivery, low partnership"
    same = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [-2.0, -2.0, 0.0, 0.0]])
    twins = distinguishing_names(same, [0, 1], dims, "Emerging")
    assert twins[0] != twins[1]


def _blobs(rng: np.random.Generator, centres: list[list[float]], n: int = 150) -> np.ndarray:
    return np.vstack([rng.normal(c, 0.6, size=(n, len(c))) for c in centres])


def test_segment_centres_are_kept_across_runs_until_the_population_really_changes():
    from pipelines.segmentation.clustering import choose_k

    rng = np.random.default_rng(3)
    settings = ClusterSettings(bootstrap_samples=3, n_init=5)
    first = _blobs(rng, [[0, 0], [3, 0], [1.5, 2.5]])
    run1 = choose_k(first, 3, 3, settings)
    # a month later: a fifth of the accounts moved a little; the rest did not change
    second = first.copy()
    moved = rng.choice(len(first), len(first) // 5, replace=False)
    second[moved] += rng.normal(0, 0.3, size=(len(moved), 2))
    run2 = choose_k(second, 3, 3, settings, KHold(3, [3], run1.centres))
    assert run2.centres_from == "kept" and "centres kept" in run2.centres_note
    np.testing.assert_array_equal(run2.centres, run1.centres)
    unchanged = np.setdiff1d(np.arange(len(first)), moved)
    assert (run2.labels[unchanged] == run1.labels[unchanged]).all()
    # a real change: one group moved far away - the old centres no longer describe the
    # accounts, so they are refitted and the group's accounts follow it
    third = first.copy()
    group = run1.labels == run1.labels[0]
    third[group] += np.array([0.0, -6.0])
    run3 = choose_k(third, 3, 3, settings, KHold(3, [3], run1.centres))
    assert run3.centres_from != "kept" and "refitted" in run3.centres_note
    # centres that moved a little too far are warm-started from: every account is labelled
    # by those centres (in the previous run's order), not by the fresh fit's own numbering
    for order in ([2, 0, 1], [1, 2, 0]):
        off = run1.centres[order] + 0.9
        warm = choose_k(first, 3, 3, settings, KHold(3, [3], off))
        assert warm.centres_from == "warm start"
        nearest = ((first[:, None, :] - warm.centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        assert (warm.labels == nearest).all() and (warm.probabilities.argmax(axis=1) == nearest).all()
    nearest_old = ((run1.centres - third[group].mean(axis=0)) ** 2).sum(axis=1).min()
    nearest_new = ((run3.centres - third[group].mean(axis=0)) ** 2).sum(axis=1).min()
    assert nearest_new < 0.5 < nearest_old


def test_behaviour_centres_are_compared_in_the_dimensions_own_units_across_runs():
    from pipelines.config import DEFAULTS
    from pipelines.segmentation.dimensions import dimension_matrix
    from pipelines.segmentation.taxonomy import load_taxonomy
    from pipelines.settings import CONFIG_DIR

    taxonomy = load_taxonomy(CONFIG_DIR / "taxonomies" / "online_retail_engagement.yaml")
    columns = ["active_month_share_12m", "order_regularity_12m", "orders_per_month_12m", "average_order_value_12m"]
    rng = np.random.default_rng(5)
    before = pd.DataFrame(rng.uniform(1, 10, size=(200, 4)), columns=columns, index=[f"a{i}" for i in range(200)])
    # the next run: the same accounts plus many busier new ones - the average customer moved
    newcomers = pd.DataFrame(rng.uniform(5, 20, size=(100, 4)), columns=columns, index=[f"n{i}" for i in range(100)])
    after = pd.concat([before, newcomers])
    share = DEFAULTS["segmentation"]["max_missing_share"]
    dims_before = dimension_matrix(None, before, taxonomy, before.index, share, 42)
    dims_after = dimension_matrix(None, after, taxonomy, after.index, share, 42)
    account = dims_before.values.loc[["a0"]].to_numpy()
    # a centre placed on an unchanged account in the first run still sits on it in the next
    carried = dims_after.from_raw(dims_before.to_raw(account))
    np.testing.assert_allclose(carried, dims_after.values.loc[["a0"]].to_numpy(), atol=1e-9)
    assert not np.allclose(account, carried)  # while its z-scores moved with the population


def test_the_key_tier_is_placed_among_its_own_centres_even_when_it_shares_segment_ids():
    """The key tier is clustered on its own and its segments may carry the same ids as the
    other customers' (the same taxonomy segment): each account is placed among its own
    population's centres."""
    ids = np.array(["a", "b"])
    where = Whereabouts.of(
        [
            Place(np.array([[2.5, 0.0]]), np.array([[0.0, 0.0], [4.0, 0.0]]), ids),  # others: a at 0, b at 4
            Place(np.array([[2.5, 0.0]]), np.array([[0.0, 0.0], [2.0, 0.0]]), ids),  # key tier: a at 0, b at 2
        ],
        [pd.Index(["small"]), pd.Index(["key"])],
    )
    accounts = pd.Index(["small", "key", "unclustered"])
    old, new = pd.Series("a", index=accounts), pd.Series("b", index=accounts)
    past = where.past_midpoint(accounts, old, new)
    # small: 2.5 on a-b of length 4 -> 0.125 past the midpoint; key: 2.5 on a-b of length 2 -> 0.75
    np.testing.assert_allclose(past[:2], [0.125, 0.75])
    assert np.isnan(past[2])
